"""The timeline page (timeline.md) with its bar chart, from site/templates/timeline.md.j2."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment

from peftkb.site.model import SiteModel
from peftkb.site.templating import render_template


def render(env: Environment, model: SiteModel, root: Path) -> dict[str, str]:
    return {"timeline.md": render_template(env, "timeline.md.j2", "timeline.md", chart=timeline_data(model),
                                           model=model, catalog=model.catalog)}


def timeline_data(model: SiteModel) -> dict[str, Any]:
    """Methods per year, stacked by top-level category, laid out as an SVG bar chart."""
    methods = [m for m in model.catalog.methods if m.kind == "method"]
    if not methods:
        return {"years": [], "bars": [], "width": 0, "height": 0, "ticks": [], "legend": []}
    years = list(range(min(m.year for m in methods), max(m.year for m in methods) + 1))
    tops = [c for c in model.roots if any(model.top(m.category).id == c.id for m in methods)]
    counts = {(y, t.id): 0 for y in years for t in tops}
    for m in methods:
        counts[(m.year, model.top(m.category).id)] += 1
    peak = max(sum(counts[(y, t.id)] for t in tops) for y in years)
    step = 1 if peak <= 8 else 2 if peak <= 16 else 5 if peak <= 40 else 10
    top_value = -(-peak // step) * step
    left, right, top_pad, bottom = 44, 16, 16, 40
    plot_h = 240
    slot = max(34, min(96, 760 // max(1, len(years))))
    width = left + right + slot * len(years)
    height = top_pad + plot_h + bottom
    bar_w = slot * 0.62
    bars = []
    for i, y in enumerate(years):
        x = left + i * slot + (slot - bar_w) / 2
        base = top_pad + plot_h
        total = 0
        for t in tops:
            n = counts[(y, t.id)]
            if not n:
                continue
            h = plot_h * n / top_value
            base -= h
            total += n
            names = ", ".join(m.name for m in methods if m.year == y and model.top(m.category).id == t.id)
            bars.append({"x": round(x, 1), "y": round(base, 1), "w": round(bar_w, 1), "h": round(h, 1),
                         "colour": model.colour(t.id), "slug": t.slug,
                         "title": f"{y} · {t.name}: {n} ({names})"})
        bars.append({"label": str(total) if total else "", "x": round(x + bar_w / 2, 1), "y": round(base - 5, 1)})
    ticks = [{"value": v, "y": round(top_pad + plot_h - plot_h * v / top_value, 1)}
             for v in range(0, top_value + 1, step)]
    labels = [{"text": str(y), "x": round(left + i * slot + slot / 2, 1), "y": top_pad + plot_h + 20}
              for i, y in enumerate(years)]
    legend = [{"name": t.name, "colour": model.colour(t.id), "category": t,
               "count": sum(counts[(y, t.id)] for y in years)} for t in tops]
    return {"years": years, "bars": bars, "width": width, "height": height, "ticks": ticks, "labels": labels,
            "legend": legend, "left": left, "right": width - right, "plot_bottom": top_pad + plot_h,
            "by_year": {y: sorted((m for m in methods if m.year == y), key=lambda m: m.name.casefold())
                        for y in years}}

