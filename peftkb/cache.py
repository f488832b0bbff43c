"""Locating the knowledge base and caching its validated form as plain JSON.

This module imports neither pydantic nor networkx: a command that only reads the catalog can be
served from the cache (see `peftkb.index`) in the time it takes to parse one JSON file.

The cache key is a hash of the name, size and mtime of every input file (and of the names of the
reference implementation files, whose existence the loader checks), so editing, adding or removing
any YAML file invalidates it. `PEFTKB_NO_CACHE=1` turns it off.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

TAXONOMY_FILE = Path("taxonomy") / "taxonomy.yaml"
CATALOG_DIR = Path("catalog")
IMPL_DIR = Path("reference_impls")
CACHE_VERSION = "2"


def find_root(start: Path | None = None) -> Path:
    """The knowledge-base root: $PEFTKB_ROOT, else the folder holding the package (a source checkout)."""
    env = os.environ.get("PEFTKB_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(start or __file__).resolve()
    for folder in [here, *here.parents]:
        if (folder / TAXONOMY_FILE).is_file() and (folder / CATALOG_DIR).is_dir():
            return folder
    return Path.cwd()


def catalog_files(root: Path) -> list[Path]:
    return sorted((root / CATALOG_DIR).glob("*.yaml"))


def cache_enabled() -> bool:
    return not os.environ.get("PEFTKB_NO_CACHE")


def cache_path(root: Path) -> Path:
    return root / ".peftkb-cache" / "catalog.json"


def fingerprint(root: Path, files: list[Path]) -> str:
    h = hashlib.sha256(CACHE_VERSION.encode())
    for path in [root / TAXONOMY_FILE, *files]:
        st = path.stat()
        h.update(f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    if (root / IMPL_DIR).is_dir():
        for path in sorted((root / IMPL_DIR).glob("*.py")):
            h.update(f"impl:{path.name}\n".encode())
    return h.hexdigest()


def read_cache(root: Path, key: str) -> dict[str, Any] | None:
    """The cached catalog dump for this key, or None."""
    try:
        raw = json.loads(cache_path(root).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or raw.get("key") != key or not isinstance(raw.get("catalog"), dict):
        return None
    return raw["catalog"]


def write_cache(root: Path, key: str, dump: dict[str, Any]) -> None:
    path = cache_path(root)
    try:
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "catalog": dump}), encoding="utf-8")
        tmp.replace(path)  # atomic: a reader never sees half a cache
    except OSError:
        pass  # a read-only checkout still works, only without the cache
