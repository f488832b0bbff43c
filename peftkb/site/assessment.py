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
#: the page shows one section per suite that has results: a suite is the profiles whose runs are read
#: together (the CPU's MiniLM and SmolLM2 profiles form one comparison across model sizes)
SUITES: dict[str, tuple[str, ...]] = {"full": ("full",), "cpu": ("cpu", "cpu-long"), "cpu-quick": ("cpu-quick",),
                                      "smoke": ("smoke",)}


@dataclass
class Assessment:
    profile: str                             # the suite's name (see SUITES)
    profiles: list[str]                      # the profiles with results in this suite
    descriptions: dict[str, str]             # profile -> its description in runner.PROFILES
    folder: str                              # the suite's first results folder, relative to the repository root
    folders: list[str]
    rows: list[dict[str, Any]]               # report.table_rows, one per method x model
    models: list[str]
    findings: list[findings.Finding]
    invocations: list[dict[str, Any]]        # runs.json: command, machine, start, end
    versions: dict[str, str]
    machines: list[str]
    n_train: dict[str, int]
    n_val: dict[str, int]
    n_test: dict[str, int]
    seq_len: dict[str, int]
    head_params: dict[str, int]
    failed: list[dict[str, str]]
    memory_kinds: list[str]
    plots: dict[str, str] = field(default_factory=dict)  # docs-relative path -> SVG text
    # model -> the same SVGs as Markup, put inline in the page so that its CSS colours their text and lines
    # (an <img> SVG cannot follow the dark scheme); names in them are escaped by bench.report
    inline_plots: dict[str, list[Markup]] = field(default_factory=dict)


def load_all(root: Path) -> list[Assessment]:
    """One Assessment per suite with committed results, in SUITES order (the smoke suite only when no
    other has results)."""
    out = []
    for suite, profiles in SUITES.items():
        if suite == "smoke" and out:
            break
        found = [(p, root / RESULTS / f"bench-{p}") for p in profiles]
        found = [(p, f, list(read_results(f / "results.jsonl").values())) for p, f in found]
        found = [(p, f, rs) for p, f, rs in found if rs]
        if found:
            out.append(_assess(suite, found, root))
    return out


def load(root: Path) -> Assessment | None:
    """The first suite with results (None without any)."""
    every = load_all(root)
    return every[0] if every else None


def _assess(suite: str, found: list[tuple[str, Path, list[dict[str, Any]]]], root: Path) -> Assessment:
    from peftkb.bench.runner import PROFILES

    records = [r for _, _, rs in found for r in rs]
    folders = [f.relative_to(root).as_posix() for _, f, _ in found]
    cells = report.summarise(records)
    ok = [r for r in records if r.get("status") == "ok"]
    models = findings.models_by_size(cells)
    per_model = lambda key: {r["model"]: r[key] for r in ok if key in r}  # noqa: E731
    invocations: list[dict[str, Any]] = []
    for _, folder, _ in found:
        try:
            log = json.loads((folder / "runs.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log = []
        invocations += [inv for inv in log if isinstance(inv, dict)] if isinstance(log, list) else []
    plots, inline = {}, {}
    for model in models:
        acc, mem = report.accuracy_vs_params_svg(cells, model), report.memory_svg(cells, model)
        plots[f"assets/bench/{suite}/accuracy_vs_params_{model}.svg"] = acc
        plots[f"assets/bench/{suite}/memory_{model}.svg"] = mem
        inline[model] = [Markup(acc), Markup(mem)]
    method_order = {m: i for i, m in enumerate(_survey_order(ok))}
    rows = sorted(report.table_rows(cells), key=lambda r: (models.index(r["model"]), method_order.get(r["method"], 99)))
    profiles = [p for p, _, _ in found]
    return Assessment(
        profile=suite, profiles=profiles, descriptions={p: PROFILES[p].description for p in profiles if p in PROFILES},
        folder=folders[0], folders=folders, rows=rows, models=models,
        findings=findings.check_all(cells, per_model("n_test")), invocations=invocations,
        versions=ok[0].get("versions", {}) if ok else {}, machines=sorted({r.get("machine", "?") for r in records}),
        n_train=per_model("n_train"), n_val=per_model("n_val"), n_test=per_model("n_test"), seq_len=per_model("seq_len"), head_params=per_model("head_params"),
        failed=[{"key": r["key"], "error": str(r.get("error", ""))} for r in records if r.get("status") != "ok"],
        memory_kinds=sorted({str(r.get("peak_memory_kind", "")) for r in ok}), plots=plots, inline_plots=inline)


def _survey_order(records: list[dict[str, Any]]) -> list[str]:
    seen = {r["method"] for r in records}
    return [m for m in SURVEY_METHODS if m in seen] + sorted(seen - set(SURVEY_METHODS))
