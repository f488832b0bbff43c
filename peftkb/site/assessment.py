"""The Assessment page's data: the committed benchmark results, their provenance and the claims attributed
to the survey (from a third-party summary of it, not its text).

Reads `benchmarks/results/bench-<profile>/` (results.jsonl from `peftkb bench`, runs.json with the
commands that produced it) and returns plain values for the template plus the SVG plots, which the site
serves as files. Nothing here imports torch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markupsafe import Markup

from peftkb.bench import findings, report
from peftkb.bench.runner import SURVEY_METHODS, read_results

RESULTS = Path("benchmarks") / "results"
PROFILE_ORDER = ("cpu", "full", "smoke")  # the page shows the first profile that has results


@dataclass
class Assessment:
    profile: str
    folder: str                              # relative to the repository root
    rows: list[dict[str, Any]]               # report.table_rows, one per method x model
    models: list[str]
    findings: list[findings.Finding]
    invocations: list[dict[str, Any]]        # runs.json: command, machine, start, end
    versions: dict[str, str]
    machines: list[str]
    n_train: dict[str, int]
    n_test: dict[str, int]
    seq_len: dict[str, int]
    head_params: dict[str, int]
    failed: list[dict[str, str]]
    plots: dict[str, str] = field(default_factory=dict)  # docs-relative path -> SVG text
    # model -> the same SVGs as Markup, put inline in the page so that its CSS colours their text and lines
    # (an <img> SVG cannot follow the dark scheme); names in them are escaped by bench.report
    inline_plots: dict[str, list[Markup]] = field(default_factory=dict)


def load(root: Path) -> Assessment | None:
    for profile in PROFILE_ORDER:
        folder = root / RESULTS / f"bench-{profile}"
        records = list(read_results(folder / "results.jsonl").values())
        if records:
            return _assess(profile, folder, root, records)
    return None


def _assess(profile: str, folder: Path, root: Path, records: list[dict[str, Any]]) -> Assessment:
    cells = report.summarise(records)
    ok = [r for r in records if r.get("status") == "ok"]
    models = findings.models_by_size(cells)
    per_model = lambda key: {r["model"]: r[key] for r in ok if key in r}  # noqa: E731
    try:
        invocations = json.loads((folder / "runs.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        invocations = []
    plots, inline = {}, {}
    for model in models:
        acc, mem = report.accuracy_vs_params_svg(cells, model), report.memory_svg(cells, model)
        plots[f"assets/bench/accuracy_vs_params_{model}.svg"] = acc
        plots[f"assets/bench/memory_{model}.svg"] = mem
        inline[model] = [Markup(acc), Markup(mem)]
    method_order = {m: i for i, m in enumerate(_survey_order(ok))}
    rows = sorted(report.table_rows(cells), key=lambda r: (models.index(r["model"]), method_order.get(r["method"], 99)))
    return Assessment(
        profile=profile, folder=folder.relative_to(root).as_posix(), rows=rows, models=models,
        findings=findings.check_all(cells, per_model("n_test")), invocations=invocations if isinstance(invocations, list) else [],
        versions=ok[0].get("versions", {}) if ok else {}, machines=sorted({r.get("machine", "?") for r in records}),
        n_train=per_model("n_train"), n_test=per_model("n_test"), seq_len=per_model("seq_len"), head_params=per_model("head_params"),
        failed=[{"key": r["key"], "error": str(r.get("error", ""))} for r in records if r.get("status") != "ok"],
        plots=plots, inline_plots=inline)


def _survey_order(records: list[dict[str, Any]]) -> list[str]:
    seen = {r["method"] for r in records}
    return [m for m in SURVEY_METHODS if m in seen] + sorted(seen - set(SURVEY_METHODS))
