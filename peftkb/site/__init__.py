"""The browsable docs site: catalog -> markdown pages and a static JSON API (render), then mkdocs-material.

`build_site()` is what `peftkb docs build` runs; `render_docs()` alone writes the markdown tree.
"""
from __future__ import annotations

from peftkb.site.render import BuildReport, SiteError, SitePaths, build_site, render_docs

__all__ = ["BuildReport", "SiteError", "SitePaths", "build_site", "render_docs"]
