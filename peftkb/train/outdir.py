"""The output folder of `peftkb train`: what it may hold, and writes that never leave half a file.

    OUT/
      peftkb-train.json      what was trained: method, its config, model, task, labels, options, versions
      adapter.safetensors    the trained parameters (reference_impls._core.save_trainable)
      metrics.jsonl          one JSON object per logged step and per evaluation
      checkpoint.pt          the last good checkpoint, for --resume
      merged/                the base model with the update folded in (--merge, mergeable methods only)

Every file is written to `NAME.tmp.PID` in the same folder and renamed over NAME (an atomic replace on
POSIX), so an interrupted run (Ctrl-C, full disk, out of memory) leaves the previous good file in place.
A folder holding anything else is refused: peftkb never deletes or overwrites a file it did not write.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from peftkb.errors import UsageError

MARKER = "peftkb-train.json"
ADAPTER = "adapter.safetensors"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
MERGED = "merged"
OURS = (MARKER, ADAPTER, METRICS, CHECKPOINT, MERGED)
_TEMP = re.compile(r"^(%s)\.tmp\.\d+(\.old)?$" % "|".join(re.escape(n) for n in OURS))


def prepare(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Check that `out` may be written; create it. Only peftkb's own leftovers are ever removed."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    foreign = [n for n in entries if n not in OURS and not _TEMP.match(n)]
    if foreign:
        raise UsageError(f"--out {out}: holds files peftkb did not write ({', '.join(foreign[:5])}"
                         f"{', ...' if len(foreign) > 5 else ''}); choose an empty or new folder")
    if entries and MARKER not in entries and [n for n in entries if not _TEMP.match(n)]:
        raise UsageError(f"--out {out}: holds training files but no {MARKER}; choose an empty or new folder")
    if resume:
        if not (out / CHECKPOINT).is_file():
            raise UsageError(f"--resume: no {CHECKPOINT} in {out}")
    elif MARKER in entries and not overwrite:
        raise UsageError(f"--out {out}: holds a previous run; pass --resume to continue it or --overwrite to "
                         "start over")
    out.mkdir(parents=True, exist_ok=True)
    for name in entries:  # leftovers of an interrupted write are ours: they can go
        if _TEMP.match(name):
            _remove(out / name)
    if overwrite and not resume:
        for name in OURS:
            if (out / name).exists():
                _remove(out / name)


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def _temp(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp.{os.getpid()}")


@contextmanager
def atomic(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on any error it is removed."""
    tmp = _temp(path)
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as fh:  # the bytes reach the disk before the rename makes them visible
                os.fsync(fh.fileno())
        old = None
        if tmp.is_dir() and path.is_dir():  # a folder cannot be renamed over a non-empty one: move it aside
            old = path.with_name(f"{path.name}.tmp.{os.getpid()}.old")
            path.replace(old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        if tmp.exists():
            _remove(tmp)
        raise


def write_text(path: Path, text: str) -> None:
    with atomic(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_with(path: Path, save: Callable[[Path], None]) -> None:
    """`save(tmp)` writes the file (torch.save, safetensors); the rename publishes it."""
    with atomic(path) as tmp:
        save(tmp)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
