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
SURVEY_FILE = Path("taxonomy") / "survey-xu2023.yaml"
CATALOG_DIR = Path("catalog")
IMPL_DIR = Path("reference_impls")
#: Where a wheel carries the knowledge base (taxonomy, catalog, schema): inside the package.
PACKAGED_KB = Path(__file__).resolve().parent / "_kb"
CACHE_VERSION = "2"


def is_root(folder: Path) -> bool:
    """Whether `folder` holds a knowledge base (a taxonomy file and a catalog folder)."""
    return (folder / TAXONOMY_FILE).is_file() and (folder / CATALOG_DIR).is_dir()


def find_root(start: Path | None = None) -> Path:
    """The knowledge-base root, decided the way git finds a repository.

    1. `$PEFTKB_ROOT` (set by `--root`), as given;
    2. the nearest folder at or above `start` (default: the current folder) that holds a knowledge base;
    3. outside any knowledge base, the installed one: the source checkout holding this package (an
       editable install), else the copy a wheel ships in `peftkb/_kb`.
    """
    env = os.environ.get("PEFTKB_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(start).resolve() if start is not None else Path.cwd().resolve()
    for folder in [here, *here.parents]:
        if is_root(folder):
            return folder
    return installed_root()


def installed_root() -> Path:
    """The knowledge base that came with the installed package."""
    package = Path(__file__).resolve().parent
    for folder in (package.parent, PACKAGED_KB):
        if is_root(folder):
            return folder
    return PACKAGED_KB  # a broken install: the loader reports the missing taxonomy file


def is_checkout(root: Path) -> bool:
    """Whether `root` is a source checkout (has the site templates), not the data a wheel ships."""
    return (root / "site" / "templates").is_dir() and root.resolve() != PACKAGED_KB


def impl_dir(root: Path) -> Path:
    """The reference implementations of a root: its own folder, else the installed `reference_impls` package."""
    own = root / IMPL_DIR
    if own.is_dir():
        return own
    import importlib.util

    spec = importlib.util.find_spec("reference_impls")  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return own


def catalog_files(root: Path) -> list[Path]:
    return sorted((root / CATALOG_DIR).glob("*.yaml"))


def cache_enabled() -> bool:
    return not os.environ.get("PEFTKB_NO_CACHE")


def cache_path(root: Path) -> Path:
    """`.peftkb-cache/` in a checkout; for the installed data, the user's cache folder (never site-packages)."""
    if root.resolve() == PACKAGED_KB:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return base / "peftkb" / hashlib.sha256(str(root).encode()).hexdigest()[:16] / "catalog.json"
    return root / ".peftkb-cache" / "catalog.json"


def fingerprint(root: Path, files: list[Path]) -> str:
    h = hashlib.sha256(CACHE_VERSION.encode())
    for path in [root / TAXONOMY_FILE, *files]:
        st = path.stat()
        h.update(f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    impls = impl_dir(root)
    if impls.is_dir():
        for path in sorted(impls.glob("*.py")):
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
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "catalog": dump}), encoding="utf-8")
        tmp.replace(path)  # atomic: a reader never sees half a cache
    except OSError:
        pass  # a read-only checkout still works, only without the cache
