"""Fixtures for the site tests: the real catalog rendered once per session, and helpers to build a site."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from peftkb.loader import find_root, load_catalog
from peftkb.model import Catalog
from peftkb.site.render import RenderResult, SitePaths, render_docs

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "site"


@dataclass
class Rendered:
    root: Path
    catalog: Catalog
    docs: Path
    result: RenderResult


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """The real catalog rendered to markdown + JSON in a temporary folder (no mkdocs run)."""
    root = find_root()  # this checkout, or $PEFTKB_ROOT
    catalog = load_catalog(root)
    docs = tmp_path_factory.mktemp("docs")
    result = render_docs(catalog, SitePaths.for_root(root, site_dir=SITE, docs_dir=docs))
    return Rendered(root=root, catalog=catalog, docs=docs, result=result)


@pytest.fixture(scope="session")
def built_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real site built once (render + mkdocs --strict + link check) into a temporary folder."""
    from peftkb.site.render import build_site

    out = tmp_path_factory.mktemp("built")
    return build_site(find_root(), site_dir=SITE, docs_dir=out / "docs", build_dir=out / "build").build_dir


@pytest.fixture
def copy_site():
    """Make a private copy of site/ (templates, mkdocs.yml, overrides, assets) to break on purpose."""
    def copy(dest: Path) -> Path:
        shutil.copytree(SITE, dest, ignore=shutil.ignore_patterns("docs", "build"))
        return dest

    return copy
