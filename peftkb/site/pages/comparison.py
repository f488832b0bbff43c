"""The comparison page (comparison.md), from site/templates/comparison.md.j2."""
from __future__ import annotations

from pathlib import Path

from jinja2 import Environment

from peftkb.site.model import SiteModel
from peftkb.site.templating import render_template


def render(env: Environment, model: SiteModel, root: Path) -> dict[str, str]:
    return {"comparison.md": render_template(env, "comparison.md.j2", "comparison.md", model=model, catalog=model.catalog)}
