"""Catalog -> markdown pages (jinja2) and a static JSON API; `build.py` then runs `mkdocs build --strict`.

Layout of the generated tree (site/docs/, regenerated on every build):

    index.md  taxonomy/index.md  taxonomy/<category id>/index.md  methods/index.md  methods/<id>.md
    comparison.md  timeline.md  survey.md  assessment.md  api.md
    api/methods.json  api/methods/<id>.json  api/taxonomy.json     (same data as the CLI's --format json)
    assets/search-keys.js                                           (method names and aliases -> pages)
    reference_impls/<file>.py                                       (copies, linked from method pages)
    benchmarks/results/...                                          (copies of the result files evidence cites)
    assets/                                                          (site/assets: our CSS/JS, vendored libs)

Each page kind has one template in site/templates/ and one small renderer beside it in peftkb/site/pages/;
they share one escaping layer (peftkb/site/escape.py) and one template environment (templating.py).
"""
from __future__ import annotations

import html
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftkb.model import Catalog
from peftkb.site.model import SiteModel, category_page, method_page
from peftkb.site.search import search_key_table
from peftkb.site.templating import SiteError, make_environment

# -- paths ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SitePaths:
    """Where the site's inputs and outputs live; everything defaults to <root>/site/..."""

    root: Path
    docs_dir: Path
    build_dir: Path
    templates_dir: Path
    assets_dir: Path
    config_file: Path

    @classmethod
    def for_root(cls, root: Path, *, site_dir: Path | None = None, docs_dir: Path | None = None,
                 build_dir: Path | None = None, templates_dir: Path | None = None) -> "SitePaths":
        site = site_dir or root / "site"
        return cls(root=root, docs_dir=(docs_dir or site / "docs").resolve(),
                   build_dir=(build_dir or site / "build").resolve(),
                   templates_dir=(templates_dir or site / "templates").resolve(),
                   assets_dir=(site / "assets").resolve(), config_file=(site / "mkdocs.yml").resolve())


@dataclass
class RenderResult:
    pages: list[str]
    nav: list[Any]
    files: int


def _nav_title(text: str) -> str:
    # mkdocs puts nav titles into HTML without escaping them
    return html.escape(" ".join(text.split()), quote=True)


def build_nav(model: SiteModel) -> list[Any]:
    def cat_nav(parent: str | None) -> list[Any]:
        items = []
        for c in model.children.get(parent, []):
            if model.children.get(c.id):
                items.append({_nav_title(c.name): [category_page(c.id), *cat_nav(c.id)]})
            else:
                items.append({_nav_title(c.name): category_page(c.id)})
        return items

    method_groups = []
    for top in model.roots:
        ms = sorted(model.subtree_methods(top.id), key=lambda m: m.name.casefold())
        if ms:
            method_groups.append({_nav_title(top.name): [{_nav_title(m.name): method_page(m.id)} for m in ms]})
    return [
        {"Home": "index.md"},
        {"Taxonomy": ["taxonomy/index.md", *cat_nav(None)]},
        {"Methods": ["methods/index.md", *method_groups]},
        {"Compare": "comparison.md"},
        {"Timeline": "timeline.md"},
        {"Survey": "survey.md"},
        {"Assessment": "assessment.md"},
        {"JSON API": "api.md"},
    ]


def render_docs(catalog: Catalog, paths: SitePaths) -> RenderResult:
    """Write the markdown pages, the JSON API and the assets into paths.docs_dir (its other files removed)."""
    from peftkb.site import pages

    if not paths.templates_dir.is_dir():
        raise SiteError(f"no templates folder at {paths.templates_dir}")
    env = make_environment(paths.templates_dir)
    model = SiteModel(catalog=catalog, root=paths.root)
    out: dict[str, str] = {}
    for kind in pages.ALL:
        out.update(kind.render(env, model, paths.root))
    out["assets/search-keys.js"] = search_key_table(catalog)
    out.update(model.evidence.files)  # the result files that provenance links point to
    for m in catalog.methods:
        source = model.reference_source(m)
        if source is not None and m.implementations.reference:
            out[m.implementations.reference] = source

    _write_tree(paths.docs_dir, out, paths.assets_dir)
    pages_md = sorted(p for p in out if p.endswith(".md"))
    return RenderResult(pages=pages_md, nav=build_nav(model), files=len(out))


def _write_tree(docs_dir: Path, files: dict[str, str], assets_dir: Path) -> None:
    """Replace docs_dir with exactly `files` plus the assets, touching only files whose content changed.

    Unchanged files keep their mtime, so a running `mkdocs serve` rebuilds only when something changed.
    """
    wanted: dict[Path, bytes] = {docs_dir / rel: text.encode("utf-8") for rel, text in files.items()}
    if assets_dir.is_dir():
        for src in sorted(assets_dir.rglob("*")):
            if src.is_file() and src.suffix != ".md":  # a notes file is not a page
                wanted[docs_dir / "assets" / src.relative_to(assets_dir)] = src.read_bytes()
    docs_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(docs_dir.rglob("*"), reverse=True):  # children before their folders
        if path.is_file() or path.is_symlink():
            if path not in wanted:
                path.unlink()
        elif path.is_dir() and not any(w.is_relative_to(path) for w in wanted):
            shutil.rmtree(path)
    for path, data in wanted.items():
        try:
            if path.is_file() and path.read_bytes() == data:
                continue
        except OSError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


# What peftkb.cli.docs and older callers import from here
from peftkb.site.build import (BuildReport, build_site, check_site, mkdocs_config, serve_site,  # noqa: E402
                               summarize, watched_inputs)
from peftkb.site.escape import fence, md_text, mermaid_label, safe_url  # noqa: E402
from peftkb.site.formulas import count_latex  # noqa: E402

__all__ = ["BuildReport", "RenderResult", "SiteError", "SitePaths", "build_nav", "build_site", "check_site",
           "count_latex", "fence", "make_environment", "md_text", "mermaid_label", "mkdocs_config", "render_docs",
           "safe_url", "serve_site", "summarize", "watched_inputs"]
