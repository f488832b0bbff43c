"""Measured evidence beside the formulas: published runs of PEFT methods, every number with its provenance.

`evidence/*.yaml` holds one file per source (today: Hugging Face peft's MetaMathQA method comparison).
A source names the repository, the pinned commit, the folder it read and, for each kept number, the
field of the result file it came from; each run names its result file, the catalog method it measures
(or null with the reason it maps to none) and that method's hyperparameters as the run set them.
Files are validated like the catalog: safe YAML, unknown fields rejected, every problem reported at
file:line, methods and hyperparameters checked against the catalog.

Our own assessment (`benchmarks/results/*/results.jsonl`, written by `peftkb bench`) is read beside it,
so `peftkb evidence METHOD` shows both, each with its setting.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from peftkb.errors import CatalogError, ProblemList
from peftkb.model import Catalog, Strict, _check_url
from peftkb.yamlsafe import YamlProblem, dotted, load_located

EVIDENCE_DIR = Path("evidence")
ASSESSMENT_DIR = Path("benchmarks") / "results"


class Provenance(Strict):
    repository: str
    commit: str = Field(pattern=r"^[0-9a-f]{40}$")
    path: str = Field(min_length=1)
    fields: dict[str, str] = Field(description="kept number -> the result-file field it was read from")
    license: str | None = None

    _url = field_validator("repository")(classmethod(lambda cls, v: _check_url(v)))


class Measured(Strict):
    """The numbers of one run. Counts and sizes are positive: a zero or negative one cannot be a measurement."""

    test_accuracy: float | None = Field(None, ge=0, le=1)
    num_trainable_params: int = Field(gt=0)
    num_total_params: int = Field(gt=0)
    accelerator_memory_max: int = Field(gt=0)
    accelerator_memory_reserved_99th: int | None = Field(None, gt=0)
    train_time_s: float = Field(gt=0)
    checkpoint_bytes: int | None = Field(None, gt=0)


class PublishedRun(Strict):
    file: str = Field(min_length=1)
    experiment: str = Field(min_length=1)
    status: Literal["success", "failed", "cancelled"]
    method: str | None = Field(None, description="catalog id; null when the run maps to no catalog entry")
    mapping: str = Field(min_length=1, description="why the run maps to this method, or to none")
    peft_type: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict, description="the method's catalog hyperparameters")
    peft_config: dict[str, Any] = Field(default_factory=dict)
    setting: dict[str, Any] = Field(default_factory=dict, description="model, batch, sequence length, ...")
    peft_version: str | None = None
    measured: Measured


class EvidenceSource(Strict):
    id: str = Field(pattern=r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
    title: str = Field(min_length=1)
    provenance: Provenance
    runs: list[PublishedRun] = Field(min_length=1)

    def mapped(self) -> list[PublishedRun]:
        return [r for r in self.runs if r.method]

    def unmapped(self) -> list[PublishedRun]:
        return [r for r in self.runs if not r.method]


def evidence_files(root: Path) -> list[Path]:
    return sorted((root / EVIDENCE_DIR).glob("*.yaml"))


def load_evidence(root: Path, catalog: Catalog) -> list[EvidenceSource]:
    """Every evidence source of the knowledge base, validated; raises CatalogError listing every problem."""
    problems = ProblemList()
    sources: list[EvidenceSource] = []
    methods = {m.id: m for m in catalog.methods}
    for path in evidence_files(root):
        rel = str(path.relative_to(root))
        try:
            located = load_located(path)
        except YamlProblem as exc:
            problems.add(rel, exc.line, exc.column, exc.field, exc.message)
            continue
        try:
            source = EvidenceSource.model_validate(located.data)
        except ValidationError as exc:
            for err in exc.errors():
                loc = tuple(err["loc"])
                line, col = located.where(loc)
                problems.add(rel, line, col, dotted(loc), err["msg"])
            continue
        if source.id != path.stem:
            problems.add(rel, *located.where(("id",)), "id", f"id '{source.id}' must equal the file name '{path.stem}'")
        for i, run in enumerate(source.runs):
            if run.method is None:
                continue
            method = methods.get(run.method)
            if method is None:
                problems.add(rel, *located.where(("runs", i, "method")), f"runs[{i}].method",
                             f"unknown catalog method '{run.method}'")
                continue
            known = {h.name for h in method.hyperparameters}
            for name in run.settings:
                if name not in known:
                    problems.add(rel, *located.where(("runs", i, "settings", name)), f"runs[{i}].settings.{name}",
                                 f"'{name}' is not a hyperparameter of {run.method}")
        sources.append(source)
    if problems:
        raise CatalogError(problems.items)
    return sources


@dataclass(frozen=True)
class Measurement:
    """One measured run of a method, from any source, in the units a reader compares."""

    source: str
    method: str
    label: str
    accuracy: float | None
    task: str
    model: str
    trainable_params: int
    peak_memory_bytes: int | None
    memory_kind: str
    settings: dict[str, Any]
    provenance: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def published_measurements(sources: list[EvidenceSource]) -> list[Measurement]:
    out = []
    for source in sources:
        p = source.provenance
        for run in source.mapped():
            m = run.measured
            out.append(Measurement(
                source=source.id, method=run.method or "", label=run.experiment, accuracy=m.test_accuracy,
                task="MetaMathQA -> GSM8K (test accuracy)", model=str(run.setting.get("model", "")),
                trainable_params=m.num_trainable_params, peak_memory_bytes=m.accelerator_memory_max,
                memory_kind=f"accelerator_memory_max ({run.setting.get('accelerator', 'GPU')})",
                settings=dict(run.settings),
                provenance=f"{p.repository}/blob/{p.commit}/{run.file}"))
    return out


def assessment_measurements(root: Path) -> list[Measurement]:
    """Our own `peftkb bench` results committed under benchmarks/results/<profile>/results.jsonl. Where a
    profile searched a learning-rate grid, only the runs at the chosen rate are measurements; the other
    rates' runs were tuning."""
    from peftkb.bench.runner import choose_lr

    out = []
    for path in sorted((root / ASSESSMENT_DIR).glob("*/results.jsonl")):
        rel = str(path.relative_to(root))
        lines = [(n, json.loads(line)) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if line.strip()]
        chosen = choose_lr([r for _, r in lines])
        for number, r in lines:
            if r.get("status") != "ok":
                continue
            lr = chosen.get((r.get("model"), r.get("method")))
            if lr is not None and r.get("lr") is not None and r["lr"] != lr:
                continue
            settings = dict(r.get("config") or {})
            settings.update({k: r[k] for k in ("lr", "steps", "seed", "seq_len", "converged") if k in r})
            out.append(Measurement(
                source=f"peftkb-bench-{r['profile']}", method=r["method"], label=r["key"], accuracy=r.get("accuracy"),
                task=f"{r.get('task')} (test accuracy, {r.get('n_test')} examples)", model=r["model"],
                trainable_params=r["trainable_params"], peak_memory_bytes=r.get("peak_memory_bytes"),
                memory_kind=str(r.get("peak_memory_kind", "")), settings=settings,
                provenance=f"{rel}:{number}"))
    return out


def measurements(root: Path, catalog: Catalog, method: str | None = None) -> list[Measurement]:
    every = published_measurements(load_evidence(root, catalog)) + assessment_measurements(root)
    return [m for m in every if method is None or m.method == method]


# -- the published runs as an external check of the calculators ----------------------------------
#: The setting of peft's MetaMathQA suite, as its result files record it (batch 4, 768 tokens, bf16
#: weights, AdamW); the estimate is made for the same setting.
CHECK_PRESET = "llama-3.2-3b"


@dataclass(frozen=True)
class CalculatorCheck:
    """`peftkb params` and `peftkb memory` against one published run."""

    experiment: str
    method: str
    measured_params: int
    counted_params: int | None
    measured_memory: int
    estimated_memory: int | None
    error: str | None = None

    @property
    def params_exact(self) -> bool:
        return self.counted_params == self.measured_params

    @property
    def memory_error(self) -> float | None:
        """Relative error of the estimate against the measured peak (positive: an over-estimate)."""
        if self.estimated_memory is None:
            return None
        return self.estimated_memory / self.measured_memory - 1

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "params_exact": self.params_exact,
                "memory_error": None if self.memory_error is None else round(self.memory_error, 4)}


def check_calculators(source: EvidenceSource, catalog: Catalog) -> list[CalculatorCheck]:
    """Count and estimate every mapped run of `source` with the calculators, in the run's own setting."""
    from peftkb.calculators.architecture import load_model
    from peftkb.calculators.memory import estimate_memory
    from peftkb.calculators.params import count_trainable
    from peftkb.errors import PeftkbError

    methods = {m.id: m for m in catalog.methods}
    arch = load_model(CHECK_PRESET)
    out = []
    for run in source.mapped():
        method = methods[run.method or ""]
        overrides = {k: v for k, v in run.settings.items() if k != "target_modules"}
        per_target = bool(method.trainable_params and method.trainable_params.per_target)
        targets = run.settings.get("target_modules") if per_target else None
        counted = estimated = None
        error = None
        try:
            count = count_trainable(method, arch, overrides, targets=targets)
            counted = count.trainable
            batch = int(run.setting.get("batch_size", 4))
            seq = int(run.setting.get("max_seq_length", 768))
            # peft's autocast_adapter_dtype=False keeps the adapter in the model dtype (the OSF run)
            adapter_dtype = "fp32" if run.setting.get("autocast_adapter_dtype", True) else "model"
            estimated = estimate_memory(method, arch, count, batch=batch, seq=seq, dtype="bf16", optimizer="adamw",
                                        overrides=overrides, adapter_dtype=adapter_dtype,
                                        peft_version=run.peft_version).peak
        except PeftkbError as exc:
            error = str(exc)
        out.append(CalculatorCheck(run.experiment, method.id, run.measured.num_trainable_params, counted,
                                   run.measured.accelerator_memory_max, estimated, error))
    return out


def summarize_checks(checks: list[CalculatorCheck]) -> dict[str, Any]:
    """Exact counts, and the median and worst absolute memory error, overall and per method."""
    import statistics

    def stats(group: list[CalculatorCheck]) -> dict[str, Any]:
        errors = [abs(c.memory_error) for c in group if c.memory_error is not None]
        return {"runs": len(group), "params_exact": sum(c.params_exact for c in group),
                "memory_median_abs_error": round(statistics.median(errors), 4) if errors else None,
                "memory_worst_abs_error": round(max(errors), 4) if errors else None}

    by_method: dict[str, list[CalculatorCheck]] = {}
    for c in checks:
        by_method.setdefault(c.method, []).append(c)
    return {"overall": stats(checks), "by_method": {k: stats(v) for k, v in sorted(by_method.items())}}


def pareto_front(points: list[Measurement], cost: str = "trainable_params") -> list[Measurement]:
    """The measurements no other beats on both accuracy (higher) and `cost` (lower), cheapest first.

    `cost` is "trainable_params" or "peak_memory_bytes"; measurements without an accuracy or that cost
    are left out. Of two with equal cost and accuracy the first is kept.
    """
    if cost not in ("trainable_params", "peak_memory_bytes"):
        raise ValueError(f"cost must be trainable_params or peak_memory_bytes, not {cost!r}")
    usable = [p for p in points if p.accuracy is not None and getattr(p, cost) is not None]
    front: list[Measurement] = []
    best = float("-inf")
    for p in sorted(usable, key=lambda p: (getattr(p, cost), -(p.accuracy or 0.0))):
        if p.accuracy is not None and p.accuracy > best:
            front.append(p)
            best = p.accuracy
    return front
