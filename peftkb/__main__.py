"""`python -m peftkb` runs the CLI."""
from peftkb.cli import main

main()
