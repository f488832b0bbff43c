"""The knowledge-base root is found the way git finds a repository: $PEFTKB_ROOT, else the nearest folder
at or above the current one that holds a knowledge base, else the installed one."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from peftkb import cache
from tests.conftest import KB, ROOT


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("PEFTKB_ROOT", raising=False)


def test_the_nearest_knowledge_base_above_the_current_folder_wins(kb: KB, clean_env, monkeypatch):
    deep = kb.root / "catalog" / "nested" / "deeper"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert cache.find_root() == kb.root.resolve()


def test_peftkb_root_overrides_the_current_folder(kb: KB, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(kb.root)
    monkeypatch.setenv("PEFTKB_ROOT", str(ROOT))
    assert cache.find_root() == ROOT.resolve()


def test_outside_any_knowledge_base_the_installed_one_is_used(tmp_path: Path, clean_env, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cache.find_root() == cache.installed_root()
    assert cache.is_root(cache.installed_root())


def test_a_copy_of_the_project_lists_its_own_catalog_not_the_installed_one(kb: KB, clean_env):
    """Run from inside a copy: the copy's 10 entries, not the installed checkout's 120."""
    out = subprocess.run([sys.executable, "-m", "peftkb", "list", "--format", "ids"], cwd=kb.root,
                         capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in __import__("os").environ.items() if k != "PEFTKB_ROOT"})
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.split()) == sorted(p.stem for p in (kb.root / "catalog").glob("*.yaml"))


def test_the_source_checkout_is_recognised_and_the_wheel_data_is_not_a_checkout():
    assert cache.is_checkout(ROOT)
    assert not cache.is_checkout(cache.PACKAGED_KB)


def test_reference_implementations_resolve_in_a_checkout_and_without_one(kb: KB, tmp_path: Path):
    assert cache.impl_dir(ROOT) == ROOT / "reference_impls"
    bare = tmp_path / "bare"
    bare.mkdir()
    assert cache.impl_dir(bare).resolve() == (ROOT / "reference_impls").resolve()  # the importable package


def test_the_installed_data_is_cached_outside_the_package(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = cache.cache_path(cache.PACKAGED_KB)
    assert tmp_path in path.parents
    assert cache.cache_path(ROOT) == ROOT / ".peftkb-cache" / "catalog.json"
