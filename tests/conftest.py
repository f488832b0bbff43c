"""Shared fixtures: a throwaway knowledge base to break on purpose, and a CLI runner in a subprocess."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class KB:
    """A temporary knowledge-base root holding the real taxonomy and a few real catalog entries."""

    root: Path

    def write(self, name: str, text: str) -> Path:
        path = self.root / "catalog" / name
        path.write_text(text, encoding="utf-8")
        return path

    def read(self, name: str) -> str:
        return (self.root / "catalog" / name).read_text(encoding="utf-8")

    def edit(self, name: str, old: str, new: str) -> Path:
        text = self.read(name)
        assert old in text, f"{old!r} not in {name}"
        return self.write(name, text.replace(old, new, 1))


SEED = ["lora.yaml", "adalora.yaml", "prefix-tuning.yaml", "sequential-adapter.yaml", "parallel-adapter.yaml",
        "mam-adapter.yaml", "prompt-tuning.yaml", "ia3.yaml", "propetl.yaml", "full-fine-tuning.yaml"]


@pytest.fixture
def kb(tmp_path: Path) -> KB:
    root = tmp_path / "kb"
    (root / "catalog").mkdir(parents=True)
    shutil.copytree(ROOT / "taxonomy", root / "taxonomy")
    (root / "reference_impls").mkdir()
    for name in SEED:
        shutil.copy(ROOT / "catalog" / name, root / "catalog" / name)
        # keep the temp catalog self-contained: reference paths point into the real repo's impls
        text = (root / "catalog" / name).read_text(encoding="utf-8")
        for line in text.splitlines():
            if line.strip().startswith("reference: reference_impls/"):
                ref = line.split(":", 1)[1].strip()
                (root / ref).write_text("# placeholder for loader tests\n")
    return KB(root)


def run_cli(*args: str, root: Path | None = None, env: dict[str, str] | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m peftkb ARGS` as a user would, capturing output and exit code."""
    full_env = {**os.environ, **(env or {})}
    if root is not None:
        full_env["PEFTKB_ROOT"] = str(root)
    return subprocess.run([sys.executable, "-m", "peftkb", *args], capture_output=True, text=True,
                          env=full_env, input=input, timeout=120)


def run_main(*args: str) -> tuple[int, str, str]:
    """Run `peftkb ARGS` in-process through cli.main(), as the console script does: (exit code, stdout, stderr).

    Fast enough for property-based tests that try hundreds of inputs."""
    import contextlib
    import io

    import peftkb.cli as cli_module

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["peftkb", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli_module.main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


def assert_answered(code: int, out: str, err: str) -> None:
    """Exit 0, 1 (not found) or 2 (bad input): never a traceback or an internal error."""
    assert code in (0, 1, 2), (code, out, err)
    assert "Traceback" not in out + err and "internal error" not in err, err


@pytest.fixture
def cli():
    return run_cli
