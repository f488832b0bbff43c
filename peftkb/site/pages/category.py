"""One page per category (taxonomy/<id>/index.md), from site/templates/category.md.j2."""
from __future__ import annotations

from pathlib import Path

from jinja2 import Environment

from peftkb.site.model import SiteModel, category_page
from peftkb.site.templating import render_template


def render(env: Environment, model: SiteModel, root: Path) -> dict[str, str]:
    return {category_page(c.id): render_template(env, "category.md.j2", category_page(c.id), category=c,
                                                 model=model, catalog=model.catalog)
            for c in model.catalog.categories}
