"""Shared CLI plumbing: loading the catalog once, the --format option, id completion."""
from __future__ import annotations

from functools import lru_cache

import typer

from typing import TYPE_CHECKING

from peftkb.cli.output import Format

if TYPE_CHECKING:
    from pathlib import Path

    from peftkb.index import Record
    from peftkb.model import Catalog

FORMAT_OPTION = typer.Option(Format.table, "--format", "-f", help="Output format.", case_sensitive=False)


def catalog() -> "Catalog":
    """The typed, validated catalog of the knowledge base in use (imports pydantic)."""
    from peftkb.cache import find_root

    return _catalog(find_root())


def index() -> "Record":
    """The same catalog as plain records, from the cache when it is fresh (no pydantic import)."""
    from peftkb.cache import find_root

    return _index(find_root())


# Loaded once per root: a process that runs several commands (tests, `--root` given in-process) never
# answers from another knowledge base's catalog.
@lru_cache(maxsize=4)
def _catalog(root: "Path") -> "Catalog":
    from peftkb.loader import load_catalog

    return load_catalog(root)


@lru_cache(maxsize=4)
def _index(root: "Path") -> "Record":
    from peftkb.index import load_index

    return load_index(root)


def _clear_caches() -> None:
    """Forget the loaded catalogs (for a process whose knowledge base changes on disk, e.g. tests)."""
    _catalog.cache_clear()
    _index.cache_clear()


catalog.cache_clear = index.cache_clear = _clear_caches  # type: ignore[attr-defined]


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
