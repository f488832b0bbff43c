"""Shared CLI plumbing: loading the catalog once, the --format option, id completion."""
from __future__ import annotations

from functools import lru_cache

import typer

from typing import TYPE_CHECKING

from peftkb.cli.output import Format

if TYPE_CHECKING:
    from peftkb.index import Record
    from peftkb.model import Catalog

FORMAT_OPTION = typer.Option(Format.table, "--format", "-f", help="Output format.", case_sensitive=False)


@lru_cache(maxsize=1)
def catalog() -> "Catalog":
    """The typed, validated catalog (imports pydantic)."""
    from peftkb.loader import load_catalog

    return load_catalog()


@lru_cache(maxsize=1)
def index() -> "Record":
    """The same catalog as plain records, from the cache when it is fresh (no pydantic import)."""
    from peftkb.index import load_index

    return load_index()


def complete_method_id(incomplete: str) -> list[str]:
    """Shell completion for method ids and aliases."""
    try:
        cat = index()
    except Exception:  # completion must never print a traceback into the user's shell
        return []
    return sorted(m.id for m in cat.methods if m.id.startswith(incomplete.lower()))


def complete_category_id(incomplete: str) -> list[str]:
    try:
        cat = index()
    except Exception:
        return []
    return sorted(c.id for c in cat.categories if c.id.startswith(incomplete.lower()))
