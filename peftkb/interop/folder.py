"""Writing a new output folder all at once: the one rule export and convert share.

A folder that holds anything is refused (nothing of the user's is ever replaced); the files are written
into a staging folder beside the target and moved into place in one rename, so an interrupted write
leaves no half-written folder.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from peftkb.errors import UsageError


def write_new_folder(out: Path, write: Callable[[Path], None], prefix: str = ".peftkb-") -> None:
    """Fill `out` through `write(staging)`: all files or none; never into a folder that holds files."""
    if str(out).strip() in ("", "."):
        raise UsageError("-o/--output needs a folder name")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} exists and is not an empty folder; choose a new one")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=out.parent))
    try:
        write(staging)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
