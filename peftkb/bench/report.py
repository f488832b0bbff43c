"""The survey-style table (methods x models: % trainable parameters, accuracy mean ± std, memory) and
two SVG plots (accuracy vs trainable parameters on a log scale; peak memory per method), written without
a plotting library so the report needs nothing beyond the core install.
"""
from __future__ import annotations

import html
import math
import statistics
from dataclasses import dataclass
from typing import Any

PALETTE = ["#3f51b5", "#e91e63", "#009688", "#ff9800", "#795548", "#607d8b", "#9c27b0", "#8bc34a", "#f44336",
           "#00bcd4", "#cddc39", "#673ab7", "#ffc107"]


@dataclass(frozen=True)
class Cell:
    method: str
    model: str
    runs: int
    failed: int
    trainable_pct: float | None
    trainable_params: int | None
    accuracy_mean: float | None
    accuracy_std: float | None
    memory_bytes: float | None
    time_per_step_s: float | None
    memory_std: float | None = None
    lr: float | None = None          # the learning rate of these runs (chosen on validation, for grid profiles)
    converged: int | None = None     # runs stopped by early stopping (None: the profile has no validation split)
    steps_mean: float | None = None


def _sd(xs: list[float]) -> float | None:
    return statistics.stdev(xs) if len(xs) > 1 else (0.0 if xs else None)


def summarise(records: list[dict[str, Any]]) -> list[Cell]:
    """One cell per (method, model). Where a learning-rate grid was searched, only the runs at the rate
    chosen on seed 0's validation accuracy count (`runner.choose_lr`); the other rates' runs are tuning."""
    from peftkb.bench.runner import choose_lr

    chosen = choose_lr(records)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        lr = chosen.get((r.get("model"), r.get("method")))
        if lr is not None and r.get("lr") is not None and r["lr"] != lr:
            continue
        groups.setdefault((r["method"], r["model"]), []).append(r)
    cells = []
    for (method, model), rs in sorted(groups.items()):
        ok = [r for r in rs if r.get("status") == "ok"]
        acc = [r["accuracy"] for r in ok]
        mem = [r["peak_memory_bytes"] for r in ok]
        stopped = [r for r in ok if "converged" in r]
        cells.append(Cell(
            method, model, len(rs), len(rs) - len(ok),
            ok[0]["trainable_pct"] if ok else None, ok[0]["trainable_params"] if ok else None,
            statistics.fmean(acc) if acc else None, _sd(acc),
            statistics.fmean(mem) if ok else None,
            statistics.fmean(r["time_per_step_s"] for r in ok) if ok else None,
            memory_std=_sd(mem), lr=ok[0].get("lr") if ok else None,
            converged=sum(bool(r["converged"]) for r in stopped) if stopped else None,
            steps_mean=statistics.fmean(r["steps"] for r in ok) if ok and "steps" in ok[0] else None))
    return cells


def table_rows(cells: list[Cell]) -> list[dict[str, Any]]:
    rows = []
    for c in cells:
        if c.accuracy_mean is None:
            acc = "failed"
        elif c.runs - c.failed == 1:  # one run has no spread to show
            acc = f"{100 * c.accuracy_mean:.1f}"
        else:
            acc = f"{100 * c.accuracy_mean:.1f} ± {100 * (c.accuracy_std or 0):.1f}"
        rows.append({"method": c.method, "model": c.model, "trainable": c.trainable_params,
                     "trainable_pct": None if c.trainable_pct is None else f"{c.trainable_pct:.3f}%",
                     "accuracy": acc, "peak_memory_mb": None if c.memory_bytes is None else round(c.memory_bytes / 2**20),
                     "s_per_step": None if c.time_per_step_s is None else round(c.time_per_step_s, 3),
                     "runs": f"{c.runs - c.failed}/{c.runs}",
                     "lr": None if c.lr is None else f"{c.lr:g}",
                     "steps": None if c.steps_mean is None else round(c.steps_mean),
                     # early-stopped runs / runs: a run that hit its step cap has not converged
                     "converged": None if c.converged is None else f"{c.converged}/{c.runs - c.failed}"})
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    cols = ["method", "model", "trainable", "trainable_pct", "accuracy", "peak_memory_mb", "s_per_step", "runs"]
    cols += [c for c in ("lr", "steps", "converged") if any(r.get(c) is not None for r in rows)]
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    fmt = lambda v: "" if v is None else (f"{v:,}" if isinstance(v, int) else str(v))  # noqa: E731
    return head + "".join("| " + " | ".join(fmt(r[c]) for c in cols) + " |\n" for r in rows)


def _colors(methods: list[str]) -> dict[str, str]:
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(sorted(methods))}


def accuracy_vs_params_svg(cells: list[Cell], model: str, width: int = 640, height: int = 400) -> str:
    """Scatter: x = trainable parameters (log10), y = accuracy (%)."""
    pts = [c for c in cells if c.model == model and c.accuracy_mean is not None and c.trainable_params]
    colors = _colors([c.method for c in cells])
    left, right, top, bottom = 60, 170, 30, 50
    if not pts:
        return _empty_svg(width, height, f"no successful runs for {model}")
    xs = [math.log10(c.trainable_params) for c in pts]
    x0, x1 = math.floor(min(xs)), math.ceil(max(xs)) if max(xs) > math.floor(min(xs)) else math.floor(min(xs)) + 1
    ys = [100 * c.accuracy_mean for c in pts]
    y0, y1 = max(0, math.floor(min(ys) / 10) * 10), min(100, math.ceil(max(ys) / 10) * 10 or 10)
    y1 = y1 if y1 > y0 else y0 + 10
    px = lambda x: left + (x - x0) / (x1 - x0) * (width - left - right)  # noqa: E731
    py = lambda y: top + (1 - (y - y0) / (y1 - y0)) * (height - top - bottom)  # noqa: E731
    out = [_svg_open(width, height, f"Accuracy vs trainable parameters — {model}")]
    for e in range(x0, x1 + 1):
        out.append(f'<line x1="{px(e):.1f}" y1="{top}" x2="{px(e):.1f}" y2="{height - bottom}" class="grid"/>'
                   f'<text x="{px(e):.1f}" y="{height - bottom + 16}" text-anchor="middle">10^{e}</text>')
    for y in range(y0, y1 + 1, 10):
        out.append(f'<line x1="{left}" y1="{py(y):.1f}" x2="{width - right}" y2="{py(y):.1f}" class="grid"/>'
                   f'<text x="{left - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y}</text>')
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 12}" text-anchor="middle">trainable parameters (log scale)</text>')
    out.append(f'<text x="14" y="{(top + height - bottom) / 2}" transform="rotate(-90 14 {(top + height - bottom) / 2})" text-anchor="middle">accuracy (%)</text>')
    for i, (c, x, y) in enumerate(sorted(zip(pts, xs, ys), key=lambda t: t[0].method)):
        out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="5" fill="{colors[c.method]}">'
                   f'<title>{html.escape(c.method)}: {c.trainable_params:,} params, {y:.1f}%</title></circle>')
        ly = top + 14 * i
        out.append(f'<circle cx="{width - right + 14}" cy="{ly}" r="4" fill="{colors[c.method]}"/>'
                   f'<text x="{width - right + 22}" y="{ly + 4}">{html.escape(c.method)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def memory_svg(cells: list[Cell], model: str, width: int = 640, height: int = 400) -> str:
    """Horizontal bars: peak memory (MiB) per method."""
    pts = sorted((c for c in cells if c.model == model and c.memory_bytes), key=lambda c: c.memory_bytes or 0)
    if not pts:
        return _empty_svg(width, height, f"no successful runs for {model}")
    colors = _colors([c.method for c in cells])
    left, right, top, bottom = 150, 70, 30, 40
    bar = (height - top - bottom) / len(pts)
    peak = max(c.memory_bytes for c in pts) / 2**20
    out = [_svg_open(width, height, f"Peak training memory — {model}")]
    for i, c in enumerate(pts):
        mib = c.memory_bytes / 2**20
        w = (width - left - right) * mib / peak
        y = top + i * bar
        out.append(f'<text x="{left - 6}" y="{y + bar * 0.65:.1f}" text-anchor="end">{html.escape(c.method)}</text>'
                   f'<rect x="{left}" y="{y + 2:.1f}" width="{w:.1f}" height="{bar - 4:.1f}" fill="{colors[c.method]}"/>'
                   f'<text x="{left + w + 4:.1f}" y="{y + bar * 0.65:.1f}">{mib:,.0f} MiB</text>')
    out.append("</svg>")
    return "\n".join(out)


def _svg_open(width: int, height: int, title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
            f'font-family="sans-serif" font-size="11"><style>.grid{{stroke:#ddd}}</style>'
            f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{html.escape(title)}</text>')


def _empty_svg(width: int, height: int, message: str) -> str:
    return _svg_open(width, height, message) + "</svg>"
