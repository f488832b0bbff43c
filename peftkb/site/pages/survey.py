"""The survey page (survey.md), from site/templates/survey.md.j2."""
from __future__ import annotations

from pathlib import Path

from jinja2 import Environment

from peftkb.site.model import SiteModel
from peftkb.site.templating import render_template


def render(env: Environment, model: SiteModel, root: Path) -> dict[str, str]:
    page = "survey.md"
    return {page: render_template(env, "survey.md.j2", page, model=model, catalog=model.catalog)}
