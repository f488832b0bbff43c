"""`python -m peftkb.train ARGS` (and `accelerate launch -m peftkb.train ARGS`): the same as `peftkb train ARGS`."""
from __future__ import annotations

import sys


def main() -> None:
    from peftkb.cli import main as cli_main

    sys.argv = ["peftkb", "train", *sys.argv[1:]]
    cli_main()


if __name__ == "__main__":
    main()
