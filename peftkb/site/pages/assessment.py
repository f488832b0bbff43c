"""The Assessment page (assessment.md) and its SVG plots, from site/templates/assessment.md.j2.

The data (committed benchmark results, claims attributed to the survey and their verdicts) comes from
peftkb.site.assessment.
"""
from __future__ import annotations

from pathlib import Path

from jinja2 import Environment

from peftkb.site import assessment
from peftkb.site.model import SiteModel
from peftkb.site.templating import render_template


def render(env: Environment, model: SiteModel, root: Path) -> dict[str, str]:
    suites = assessment.load_all(root)
    out = {"assessment.md": render_template(env, "assessment.md.j2", "assessment.md", suites=suites, model=model,
                                            catalog=model.catalog)}
    for bench in suites:
        out.update(bench.plots)  # the plots as files too, linked under each inline plot
    return out
