"""The site's view of the measured evidence: per-method tables, accuracy-against-cost plots with their
Pareto front, and the calculators checked against peft's measured runs.

The numbers come from peftkb.evidence (validated evidence/*.yaml and our committed bench results) and
benchmarks/results/calc_vs_peft.json; this module only groups and draws them. Every run is plotted in
its own setting: one plot group per (source, model, task), never two settings on one axis. The SVGs are
put inline in the page (text and grid follow the colour scheme through site CSS, like the Assessment
plots); every name in them is HTML-escaped here.
"""
from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markupsafe import Markup

from peftkb.evidence import ASSESSMENT_DIR, Measurement, measurements, pareto_front
from peftkb.model import Catalog

CALC_CHECK = ASSESSMENT_DIR / "calc_vs_peft.json"
COSTS = {"trainable_params": "trainable parameters", "peak_memory_bytes": "peak memory"}
GiB = 2**30


@dataclass
class PlotGroup:
    """The runs of one source in one setting, drawn against each cost."""

    key: str                  # a slug, used by the page's selector
    title: str
    source: str
    model: str
    task: str
    memory_kind: str
    points: list[Measurement]
    fronts: dict[str, list[Measurement]] = field(default_factory=dict)  # cost -> Pareto front
    svgs: dict[str, Markup] = field(default_factory=dict)               # cost -> inline SVG


@dataclass
class CalcCheck:
    """benchmarks/results/calc_vs_peft.json, as the page shows it."""

    path: str
    source: str
    setting: str
    preset: str
    provenance: dict[str, Any]
    overall: dict[str, Any]
    by_method: dict[str, dict[str, Any]]
    errors: list[dict[str, Any]]  # runs the calculators could not count or estimate, with the reason

    @property
    def provenance_url(self) -> str | None:
        p = self.provenance
        if not (p.get("repository") and p.get("commit") and p.get("path")):
            return None
        return f"{p['repository']}/tree/{p['commit']}/{p['path']}"


@dataclass
class Evidence:
    by_method: dict[str, list[Measurement]]
    groups: list[PlotGroup]
    calc: CalcCheck | None
    files: dict[str, str]  # repository files the provenance links point to, copied into the site

    def of(self, method_id: str) -> list[Measurement]:
        return self.by_method.get(method_id, [])

    def settings_of(self, method_id: str) -> list[tuple[str, str, str, str]]:
        """The distinct (source, model, task, memory kind) of a method's runs, in table order."""
        return list(dict.fromkeys((m.source, m.model, m.task, m.memory_kind) for m in self.of(method_id)))


def load(root: Path, catalog: Catalog) -> Evidence:
    every = measurements(root, catalog)
    names = {m.id: m.name for m in catalog.methods}
    by_method: dict[str, list[Measurement]] = {}
    for m in every:
        by_method.setdefault(m.method, []).append(m)
    for runs in by_method.values():
        runs.sort(key=lambda m: (not m.source.startswith("peft-"), m.source, m.model, -(m.accuracy or 0.0)))
    files = {}
    for m in every:
        path = local_path(m.provenance)
        if path is not None and path not in files and (root / path).is_file():
            files[path] = (root / path).read_text(encoding="utf-8")
    calc = _calc(root)
    if calc is not None:
        files[calc.path] = (root / calc.path).read_text(encoding="utf-8")
    return Evidence(by_method=by_method, groups=_groups(every, names), calc=calc, files=files)


def local_path(provenance: str) -> str | None:
    """The repository file of a `path:line` provenance (a relative path inside the repository), else None."""
    found = re.fullmatch(r"([A-Za-z0-9_][A-Za-z0-9_.\-/]*):\d+", provenance)
    if found is None or ".." in found.group(1).split("/"):
        return None
    return found.group(1)


def local_line(provenance: str) -> int | None:
    found = re.search(r":(\d+)$", provenance)
    return int(found.group(1)) if found else None


def provenance_label(provenance: str) -> str:
    """A short name for a provenance link: `JSON @ 5d602fd` for a file at a pinned commit, else the file name."""
    found = re.search(r"/blob/([0-9a-f]{7})[0-9a-f]*/(?:.*/)?[^/]+\.([A-Za-z0-9]+)$", provenance)
    if found:
        return f"{found.group(2).upper()} @ {found.group(1)}"
    path = local_path(provenance)
    return path.rsplit("/", 1)[-1] if path else provenance


def settings_text(settings: dict[str, Any]) -> str:
    """A run's hyperparameters on one line: `r=32, alpha=64, target_modules=q,v`."""
    def show(value: Any) -> str:
        if isinstance(value, (list, tuple)):
            return ",".join(show(v) for v in value)
        return json.dumps(value) if isinstance(value, dict) else str(value)

    return ", ".join(f"{k}={show(v)}" for k, v in settings.items())


def _groups(every: list[Measurement], names: dict[str, str]) -> list[PlotGroup]:
    grouped: dict[tuple[str, str, str], list[Measurement]] = {}
    for m in every:
        grouped.setdefault((m.source, m.model, m.task), []).append(m)
    out = []
    # published runs first (the setting most readers know), then our own bench
    for (source, model_name, task), points in sorted(grouped.items(), key=lambda kv: (not kv[0][0].startswith("peft-"), kv[0])):
        key = re.sub(r"[^a-z0-9]+", "-", f"{source} {model_name}".lower()).strip("-")
        group = PlotGroup(key=key, title=f"{source}: {model_name}", source=source, model=model_name, task=task,
                          memory_kind=points[0].memory_kind, points=points)
        for cost in COSTS:
            group.fronts[cost] = pareto_front(points, cost=cost)
            group.svgs[cost] = Markup(scatter_svg(points, group.fronts[cost], cost, names,
                                                  f"Accuracy against {COSTS[cost]}: {group.title}"))
        out.append(group)
    return out


def _calc(root: Path) -> CalcCheck | None:
    path = root / CALC_CHECK
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    summary = data["summary"]
    return CalcCheck(path=CALC_CHECK.as_posix(), source=data["source"], setting=data["setting"], preset=data["preset"],
                     provenance=data["provenance"], overall=summary["overall"], by_method=summary["by_method"],
                     errors=[r for r in data["runs"] if r.get("error")])


# -- the plot ---------------------------------------------------------------------------------------
def _cost_value(m: Measurement, cost: str) -> float:
    value = getattr(m, cost)
    return value / GiB if cost == "peak_memory_bytes" else float(value)


def scatter_svg(points: list[Measurement], front: list[Measurement], cost: str, names: dict[str, str], title: str,
                width: int = 720, height: int = 440) -> str:
    """x = cost (trainable parameters on a log scale, peak memory in GiB), y = accuracy (%); the Pareto front
    drawn as a step line through its runs, which are labelled; every run has a tooltip."""
    usable = [p for p in points if p.accuracy is not None and getattr(p, cost) is not None]
    left, right, top, bottom = 60, 20, 30, 50
    esc = lambda s: html.escape(str(s), quote=True)  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11" role="img" aria-label="{esc(title)}">',
           f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{esc(title)}</text>']
    if not usable:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no run with an accuracy and a {esc(COSTS[cost])}</text></svg>')
        return "\n".join(out)
    log = cost == "trainable_params"
    xs = [math.log10(_cost_value(p, cost)) if log else _cost_value(p, cost) for p in usable]
    if log:
        x0, x1 = math.floor(min(xs)), math.ceil(max(xs))
        ticks = [(float(e), f"10^{e}") for e in range(x0, x1 + 1)]
    else:
        step = _nice_step(max(xs) - min(xs))
        x0, x1 = math.floor(min(xs) / step) * step, math.ceil(max(xs) / step) * step
        ticks = [(x0 + i * step, f"{x0 + i * step:g}") for i in range(int(round((x1 - x0) / step)) + 1)]
    if x1 <= x0:
        x1 = x0 + 1
    ys = [100 * (p.accuracy or 0.0) for p in usable]
    y0, y1 = max(0, math.floor(min(ys) / 10) * 10), min(100, math.ceil(max(ys) / 10) * 10)
    y1 = y1 if y1 > y0 else y0 + 10
    px = lambda x: left + (x - x0) / (x1 - x0) * (width - left - right)  # noqa: E731
    py = lambda y: top + (1 - (y - y0) / (y1 - y0)) * (height - top - bottom)  # noqa: E731
    for x, label in ticks:
        out.append(f'<line x1="{px(x):.1f}" y1="{top}" x2="{px(x):.1f}" y2="{height - bottom}" class="grid"/>'
                   f'<text x="{px(x):.1f}" y="{height - bottom + 16}" text-anchor="middle">{label}</text>')
    for y in range(y0, y1 + 1, 10):
        out.append(f'<line x1="{left}" y1="{py(y):.1f}" x2="{width - right}" y2="{py(y):.1f}" class="grid"/>'
                   f'<text x="{left - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y}</text>')
    axis = "trainable parameters (log scale)" if log else "peak memory (GiB)"
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 12}" text-anchor="middle">{axis}</text>')
    mid = (top + height - bottom) / 2
    out.append(f'<text x="14" y="{mid}" transform="rotate(-90 14 {mid})" text-anchor="middle">accuracy (%)</text>')
    on_front = {id(p) for p in front}
    where = {id(p): (px(x), py(y)) for p, x, y in zip(usable, xs, ys)}
    if len(front) > 1:  # the front as a step line: each run holds its accuracy until the next, cheaper-first
        steps = []
        for i, p in enumerate(front):
            x, y = where[id(p)]
            if i:
                steps.append(f"{x:.1f},{steps[-1].split(',')[1]}")
            steps.append(f"{x:.1f},{y:.1f}")
        out.append(f'<polyline class="pk-front-line" fill="none" points="{" ".join(steps)}"/>')
    for p, x, y in zip(usable, xs, ys):
        cx, cy = where[id(p)]
        shown = f"{getattr(p, cost):,} parameters" if log else f"{_cost_value(p, cost):.1f} GiB"
        tip = f"{names.get(p.method, p.method)} ({p.label}): {y:.1f}% at {shown}"
        klass = "pk-front" if id(p) in on_front else "pk-run"
        out.append(f'<circle class="{klass}" cx="{cx:.1f}" cy="{cy:.1f}" r="{5 if id(p) in on_front else 4}">'
                   f"<title>{esc(tip)}</title></circle>")
    for i, p in enumerate(front):
        cx, cy = where[id(p)]
        dy = -9 if i % 2 == 0 else 16
        anchor = "end" if cx > width - right - 80 else "start"
        dx = -7 if anchor == "end" else 7
        out.append(f'<text class="pk-front-label" x="{cx + dx:.1f}" y="{cy + dy:.1f}" text-anchor="{anchor}">'
                   f"{esc(names.get(p.method, p.method))}</text>")
    out.append("</svg>")
    return "\n".join(out)


def _nice_step(span: float) -> float:
    """A round tick step that gives about five ticks over `span`."""
    if span <= 0:
        return 1.0
    raw = span / 5
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
