"""The catalog as plain records: the fast read path for commands that only filter and print.

`load_index()` returns the validated catalog as `Record`s (dicts with attribute access) read from the
cache, without importing pydantic. On a cache miss it validates through `peftkb.loader` (which writes
the cache) and then reads the same dump, so both paths give identical data.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from peftkb.cache import cache_enabled, cache_path, catalog_files, find_root, fingerprint


class Record(dict):
    """A read-only record with attribute access: `m.properties.mergeable`."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("records are read-only")


def wrap(value: Any) -> Any:
    if isinstance(value, dict):
        return Record({k: wrap(v) for k, v in value.items()})
    if isinstance(value, list):
        return [wrap(v) for v in value]
    return value


def strip_none(value: Any) -> Any:
    """The record as `--format json` prints it: no null fields (like model_dump(exclude_none=True))."""
    if isinstance(value, dict):
        return {k: strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [strip_none(v) for v in value]
    return value


def load_index(root: Path | None = None) -> Record:
    """The validated catalog as records with `.categories` and `.methods` (raises CatalogError)."""
    root = root or find_root()
    if cache_enabled():
        records = _read_records(root, fingerprint(root, catalog_files(root)))
        if records is not None:
            return records
    from peftkb.loader import dump_catalog, load_catalog  # validates; writes the cache

    return wrap(dump_catalog(load_catalog(root)))


def _read_records(root: Path, key: str) -> Record | None:
    """The cached catalog for this key, parsed straight into records (what `read_cache` reads, in half
    the time: the JSON decoder builds each Record itself, with no second pass over the data)."""
    import json

    try:
        raw = json.loads(cache_path(root).read_bytes(), object_hook=Record)
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or raw.get("key") != key or not isinstance(raw.get("catalog"), dict):
        return None
    return raw["catalog"]
