"""Nothing destroys the user's files: `docs build -o DIR` replaces only a previous peftkb build, refuses an
empty path, and builds beside DIR, moving the site into place only once it is complete."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from peftkb.cli.docs import BUILD_MARKER
from tests.conftest import ROOT


def peftkb(*args: str, cwd: Path, root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PEFTKB_ROOT": str(root)}
    return subprocess.run([sys.executable, "-m", "peftkb", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(folder.rglob("*"))}


@pytest.fixture
def site_kb(kb):
    """The small knowledge base with a copy of the site's sources, so a build takes seconds."""
    shutil.copytree(ROOT / "site", kb.root / "site", ignore=shutil.ignore_patterns("docs", "build"))
    return kb


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "mine"
    (folder / "notes").mkdir(parents=True)
    (folder / "thesis.tex").write_text("months of work\n")
    (folder / "notes" / "a.md").write_text("notes\n")
    return folder


def refused(result, *, says: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and says in result.stderr, result.stderr


def test_an_empty_output_path_is_refused_and_the_current_folder_kept(site_kb, user_folder):
    before = snapshot(user_folder)
    refused(peftkb("docs", "build", "-o", "", cwd=user_folder, root=site_kb.root), says="empty path")
    assert snapshot(user_folder) == before


@pytest.mark.parametrize("as_given", ["absolute", ".", "relative"])
def test_a_non_empty_folder_that_is_not_a_build_is_refused(site_kb, user_folder, as_given):
    before = snapshot(user_folder)
    arg = {"absolute": str(user_folder), ".": ".", "relative": ".."}[as_given]
    cwd = user_folder if as_given != "relative" else user_folder / "notes"
    refused(peftkb("docs", "build", "-o", arg, cwd=cwd, root=site_kb.root), says="not a previous peftkb build")
    assert snapshot(user_folder) == before


def test_a_file_is_refused(site_kb, user_folder):
    before = snapshot(user_folder)
    refused(peftkb("docs", "build", "-o", "thesis.tex", cwd=user_folder, root=site_kb.root), says="not a folder")
    assert snapshot(user_folder) == before


def test_the_knowledge_base_itself_is_refused(site_kb, tmp_path):
    (site_kb.root / "catalog" / BUILD_MARKER).write_text("")  # even a marker does not make it a site
    before = snapshot(site_kb.root)
    for target in (site_kb.root, site_kb.root.parent):
        (target / BUILD_MARKER).write_text("")
        result = peftkb("docs", "build", "-o", str(target), cwd=tmp_path, root=site_kb.root)
        (target / BUILD_MARKER).unlink()
        refused(result, says="holds the knowledge base")
    assert snapshot(site_kb.root) == before


def test_a_failed_build_leaves_the_previous_build_and_no_half_site(site_kb, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / BUILD_MARKER).write_text("")
    (out / "index.html").write_text("the previous build\n")
    before = snapshot(out)
    tpl = site_kb.root / "site" / "templates" / "home.md.j2"
    tpl.write_text(tpl.read_text(encoding="utf-8") + "\n{% if %}\n", encoding="utf-8")
    result = peftkb("docs", "build", "-o", str(out), cwd=tmp_path, root=site_kb.root)
    assert result.returncode == 2 and "home.md.j2" in result.stderr and "Traceback" not in result.stderr
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kb", "out"]  # no temporary folder left


def test_a_build_goes_into_a_new_folder_then_replaces_only_itself(site_kb, tmp_path):
    out = tmp_path / "deep" / "site-out"
    first = peftkb("docs", "build", "-o", str(out), cwd=tmp_path, root=site_kb.root)
    assert first.returncode == 0, first.stderr
    assert str(out) in first.stdout
    assert (out / BUILD_MARKER).is_file() and (out / "index.html").is_file()
    assert oct(out.stat().st_mode & 0o077) != "0o0"  # not left private like a temporary folder
    (out / "stale.html").write_text("from an older build\n")
    again = peftkb("docs", "build", "-o", "site-out", cwd=out.parent, root=site_kb.root)
    assert again.returncode == 0, again.stderr
    assert (out / "index.html").is_file() and not (out / "stale.html").exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["site-out"]


def test_an_empty_folder_is_accepted(site_kb, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    result = peftkb("docs", "build", "-o", str(out), cwd=tmp_path, root=site_kb.root)
    assert result.returncode == 0, result.stderr
    assert (out / BUILD_MARKER).is_file()


@pytest.mark.parametrize("addr", ["host:99999", "127.0.0.1:0", "127.0.0.1:-1", "8000", ":8000", "127.0.0.1:http",
                                  "[::1:8000", "127.0.0.1:" + "9" * 5000])
def test_serve_refuses_an_address_it_cannot_listen_on(site_kb, tmp_path, addr):
    refused(peftkb("docs", "serve", "-a", addr, cwd=tmp_path, root=site_kb.root), says="--dev-addr")


@pytest.mark.parametrize("output, says", [("", "empty path"), (".", "is a folder"), ("no/such/x.json", "does not exist")])
def test_schema_output_must_be_a_file_path(tmp_path, site_kb, output, says):
    refused(peftkb("schema", "-o", output, cwd=tmp_path, root=site_kb.root), says=says)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kb"]


def test_schema_output_replaces_the_file_whole(tmp_path, site_kb):
    target = tmp_path / "catalog.schema.json"
    target.write_text("old\n")
    result = peftkb("schema", "-o", "catalog.schema.json", cwd=tmp_path, root=site_kb.root)
    assert result.returncode == 0, result.stderr
    assert target.read_text().startswith("{") and sorted(p.name for p in tmp_path.iterdir()) == ["catalog.schema.json", "kb"]


def _previous_build(folder: Path) -> dict[str, bytes]:
    folder.mkdir()
    (folder / BUILD_MARKER).write_text("")
    (folder / "index.html").write_text("the previous build\n")
    return snapshot(folder)


def test_a_build_that_raises_leaves_the_previous_one(tmp_path):
    from peftkb.cli.docs import _build_then_move

    out = tmp_path / "out"
    before = _previous_build(out)

    def build_into(folder: Path):
        (folder / "index.html").write_text("half a site\n")
        raise RuntimeError("mkdocs fell over")

    with pytest.raises(RuntimeError):
        _build_then_move(out, build_into)
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_move_that_fails_puts_the_previous_build_back(tmp_path, monkeypatch):
    from peftkb.cli.docs import _build_then_move

    out = tmp_path / "out"
    before = _previous_build(out)
    real_rename = Path.rename

    def rename(self, target):
        if self.name.startswith(".out.building-"):
            raise OSError("disk trouble")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError):
        _build_then_move(out, lambda folder: (folder / "index.html").write_text("new\n"))
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_successful_move_leaves_only_the_new_build(tmp_path):
    from peftkb.cli.docs import _build_then_move

    out = tmp_path / "out"
    _previous_build(out)
    assert _build_then_move(out, lambda folder: (folder / "index.html").write_text("new\n")) is not None
    assert (out / "index.html").read_text() == "new\n" and (out / BUILD_MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
