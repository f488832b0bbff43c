"""peftkb: a typed, tested knowledge base of parameter-efficient fine-tuning methods.

Importing the package imports nothing heavy; every consumer goes through `peftkb.loader`.
"""

__version__ = "0.1.0"
