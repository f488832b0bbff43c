"""Claims attributed to the survey, checked against benchmark records by explicit rules.

The four claims are worded as a third-party summary page of the survey words them; they were not checked
against the survey's own text, so they are "claims attributed to the survey", never quotations of it.
Each Finding holds the claim, a rule that turns our runs into a verdict, and the evidence the rule saw.
Verdicts:

- "supported": the runs agree with the claim by the rule;
- "not supported": the runs contradict it by the rule;
- "not distinguishable": the difference the rule turns on lies inside the seeds' spread (the two means
  differ by no more than the sum of their standard deviations over seeds);
- "not testable": the runs lack what the rule needs (a method or model missing, a failed run).

The survey measured GLUE, translation and generation on GPUs with RoBERTa, T5 and LLaMA; these runs are
one topic-classification task on a CPU with two small models, so a verdict says whether *these* runs
agree, not whether the survey was right. Pure functions over `report.Cell`s: no torch.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from peftkb.bench.report import Cell

BASELINE = "full-fine-tuning"
MODEL_SIZE_ORDER = ("tiny-bert", "tiny-llama", "minilm", "smollm2")  # smallest first (22.7M < 135M)


@dataclass(frozen=True)
class Finding:
    claim: str     # a claim attributed to the survey (from a third-party summary), in our words
    rule: str      # how the runs decide it
    verdict: str   # supported | not supported | not testable
    evidence: str  # what the rule saw


def _by_model(cells: list[Cell]) -> dict[str, dict[str, Cell]]:
    out: dict[str, dict[str, Cell]] = {}
    for c in cells:
        if c.accuracy_mean is not None:
            out.setdefault(c.model, {})[c.method] = c
    return out


def _inside_spread(a: float, a_sd: float | None, b: float, b_sd: float | None) -> bool:
    """Whether two seed means differ by no more than their spread (one standard deviation each)."""
    return abs(a - b) <= (a_sd or 0.0) + (b_sd or 0.0)


def models_by_size(cells: list[Cell]) -> list[str]:
    """The models the cells cover, smallest first (unknown ones last, by name)."""
    present = {c.model for c in cells}
    return [m for m in MODEL_SIZE_ORDER if m in present] + sorted(present - set(MODEL_SIZE_ORDER))


def match_full_fine_tuning(cells: list[Cell], n_test: dict[str, int]) -> Finding:
    claim = "Most PEFT methods match or beat full fine-tuning while training far fewer parameters."
    rule = ("On every model, more than half of the PEFT methods reach full fine-tuning's accuracy minus its "
            "spread: two standard errors (binomial, over the test articles) or two standard deviations over "
            "seeds, whichever is larger.")
    by_model = _by_model(cells)
    parts, verdicts = [], []
    for model in models_by_size(cells):
        runs = by_model.get(model, {})
        ft = runs.get(BASELINE)
        peft = {m: c for m, c in runs.items() if m != BASELINE}
        if ft is None or not peft or not n_test.get(model):
            parts.append(f"{model}: no full fine-tuning run to compare with")
            verdicts.append(None)
            continue
        p = ft.accuracy_mean or 0.0
        floor = p - 2 * max(math.sqrt(max(p * (1 - p), 1e-12) / n_test[model]), ft.accuracy_std or 0.0)
        matching = sorted(m for m, c in peft.items() if (c.accuracy_mean or 0.0) >= floor)
        verdicts.append(len(matching) > len(peft) / 2)
        parts.append(f"{model}: {len(matching)} of {len(peft)} PEFT methods reach {100 * floor:.1f}% "
                     f"(full fine-tuning {100 * p:.1f}%)")
    return Finding(claim, rule, _combine(verdicts), "; ".join(parts) or "no runs")


def propetl_best(cells: list[Cell]) -> Finding:
    claim = ("The ProPETL adapter has the best average score of the compared methods with about 1.5% of full "
             "fine-tuning's trainable parameters.")
    rule = ("ProPETL's accuracy, averaged over the models, is the highest of the PEFT methods run on every model, "
            "by more than the seeds' spread (else not distinguishable).")
    by_model = _by_model(cells)
    models = [m for m in models_by_size(cells) if m in by_model]
    methods = {m for runs in by_model.values() for m in runs if m != BASELINE}
    everywhere = sorted(m for m in methods if all(m in by_model[model] for model in models))
    if "propetl" not in everywhere or not models:
        return Finding(claim, rule, "not testable", "ProPETL did not complete on every model")
    mean = {m: statistics.fmean(by_model[model][m].accuracy_mean or 0.0 for model in models) for m in everywhere}
    ranking = sorted(everywhere, key=lambda m: -mean[m])
    rank = ranking.index("propetl") + 1
    # the spread of a model-averaged accuracy: the seeds' standard deviations, averaged over the models
    sd = {m: statistics.fmean(by_model[model][m].accuracy_std or 0.0 for model in models) for m in everywhere}
    rival = ranking[1] if rank == 1 else ranking[0]
    share = ", ".join(f"{model} {by_model[model]['propetl'].trainable_pct:.2f}%" for model in models
                      if by_model[model]["propetl"].trainable_pct is not None)
    evidence = (f"ProPETL ranks {rank} of {len(ranking)} ({100 * mean['propetl']:.1f} ± {100 * sd['propetl']:.1f}% "
                f"mean accuracy; {'runner-up' if rank == 1 else 'best'}: {rival} {100 * mean[rival]:.1f} ± "
                f"{100 * sd[rival]:.1f}%); trainable share incl. the task head: {share}")
    if len(ranking) > 1 and _inside_spread(mean["propetl"], sd["propetl"], mean[rival], sd[rival]):
        return Finding(claim, rule, "not distinguishable", evidence)
    return Finding(claim, rule, "supported" if rank == 1 else "not supported", evidence)


def qlora_least_memory(cells: list[Cell]) -> Finding:
    claim = "QLoRA reduces training memory the most."
    rule = ("On every model, QLoRA's peak memory is the lowest of all methods run (a lower method within the "
            "seeds' spread of QLoRA's is not distinguishable from it).")
    by_model = _by_model(cells)
    parts, verdicts = [], []
    for model in models_by_size(cells):
        runs = {m: c for m, c in by_model.get(model, {}).items() if c.memory_bytes}
        if "qlora" not in runs:
            parts.append(f"{model}: no QLoRA run")
            verdicts.append(None)
            continue
        lowest = min(runs, key=lambda m: runs[m].memory_bytes or 0)
        q, low = runs["qlora"], runs[lowest]
        tie = lowest != "qlora" and _inside_spread(q.memory_bytes or 0, q.memory_std, low.memory_bytes or 0, low.memory_std)
        verdicts.append("not distinguishable" if tie else lowest == "qlora")
        parts.append(f"{model}: lowest is {lowest} ({(runs[lowest].memory_bytes or 0) / 2**20:,.0f} MiB; "
                     f"QLoRA {(runs['qlora'].memory_bytes or 0) / 2**20:,.0f} MiB)")
    return Finding(claim, rule, _combine(verdicts), "; ".join(parts) or "no runs")


def savings_grow_with_size(cells: list[Cell]) -> Finding:
    claim = "The memory saved by PEFT methods, relative to full fine-tuning, grows with model size."
    rule = ("The mean saving 1 - memory(method) / memory(full fine-tuning) over the PEFT methods is larger on "
            "each bigger model than on the next smaller one.")
    by_model = _by_model(cells)
    savings: list[tuple[str, float]] = []
    for model in models_by_size(cells):
        runs = by_model.get(model, {})
        ft = runs.get(BASELINE)
        peft = [c for m, c in runs.items() if m != BASELINE and c.memory_bytes]
        if ft is None or not ft.memory_bytes or not peft:
            continue
        savings.append((model, statistics.fmean(1 - (c.memory_bytes or 0) / ft.memory_bytes for c in peft)))
    if len(savings) < 2:
        return Finding(claim, rule, "not testable", "needs full fine-tuning and PEFT runs on two models")
    grows = all(b[1] > a[1] for a, b in zip(savings, savings[1:]))
    evidence = "; ".join(f"{model}: {100 * s:.1f}% saved on average" for model, s in savings)
    return Finding(claim, rule, "supported" if grows else "not supported", evidence)


def _combine(verdicts: list[bool | str | None]) -> str:
    """All models must agree: one untestable model makes the claim untestable, one contradiction
    contradicts it, and otherwise one tie makes it not distinguishable."""
    if not verdicts or any(v is None for v in verdicts):
        return "not testable"
    if any(v is False for v in verdicts):
        return "not supported"
    return "not distinguishable" if any(v == "not distinguishable" for v in verdicts) else "supported"


def check_all(cells: list[Cell], n_test: dict[str, int]) -> list[Finding]:
    """Every claim attributed to the survey, in the summary's order. `n_test`: test articles per model (for standard errors)."""
    return [match_full_fine_tuning(cells, n_test), propetl_best(cells), qlora_least_memory(cells),
            savings_grow_with_size(cells)]
