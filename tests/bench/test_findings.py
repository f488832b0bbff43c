"""The survey's findings as rules over benchmark cells: each verdict follows from the numbers, both ways."""
from __future__ import annotations

from peftkb.bench import findings
from peftkb.bench.report import Cell


def cell(method: str, model: str, acc: float | None, memory_mib: float = 1000, pct: float = 1.0) -> Cell:
    return Cell(method, model, runs=1, failed=0 if acc is not None else 1, trainable_pct=pct,
                trainable_params=1000, accuracy_mean=acc, accuracy_std=0.0 if acc is not None else None,
                memory_bytes=memory_mib * 2**20, time_per_step_s=1.0)


def test_most_methods_match_full_fine_tuning_within_two_standard_errors():
    # FT at 90% on 100 test articles: SE = 3 points, so the floor is 84%
    cells = [cell("full-fine-tuning", "minilm", 0.90), cell("lora", "minilm", 0.85), cell("ia3", "minilm", 0.845),
             cell("bitfit", "minilm", 0.80)]
    f = findings.match_full_fine_tuning(cells, {"minilm": 100})
    assert f.verdict == "supported" and "2 of 3" in f.evidence and "84.0%" in f.evidence
    cells[1] = cell("lora", "minilm", 0.83)
    assert findings.match_full_fine_tuning(cells, {"minilm": 100}).verdict == "not supported"


def test_a_model_without_full_fine_tuning_makes_the_match_untestable():
    cells = [cell("lora", "minilm", 0.9)]
    assert findings.match_full_fine_tuning(cells, {"minilm": 100}).verdict == "not testable"


def test_propetl_best_ranks_by_mean_accuracy_over_models():
    cells = [cell("propetl", "minilm", 0.9), cell("lora", "minilm", 0.8),
             cell("propetl", "smollm2", 0.6), cell("lora", "smollm2", 0.8)]
    f = findings.propetl_best(cells)  # means: propetl 0.75, lora 0.80
    assert f.verdict == "not supported" and "ranks 2 of 2" in f.evidence
    cells[3] = cell("lora", "smollm2", 0.6)
    assert findings.propetl_best(cells).verdict == "supported"
    assert findings.propetl_best([cell("lora", "minilm", 0.8)]).verdict == "not testable"


def test_qlora_least_memory_on_every_model():
    cells = [cell("qlora", "minilm", 0.8, 500), cell("lora", "minilm", 0.8, 600),
             cell("qlora", "smollm2", 0.8, 900), cell("lora", "smollm2", 0.8, 800)]
    f = findings.qlora_least_memory(cells)
    assert f.verdict == "not supported" and "smollm2: lowest is lora" in f.evidence
    cells[3] = cell("lora", "smollm2", 0.8, 1000)
    assert findings.qlora_least_memory(cells).verdict == "supported"


def test_savings_must_grow_from_the_smaller_to_the_bigger_model():
    small = [cell("full-fine-tuning", "minilm", 0.9, 1000), cell("lora", "minilm", 0.9, 800)]   # 20% saved
    big = [cell("full-fine-tuning", "smollm2", 0.9, 4000), cell("lora", "smollm2", 0.9, 2000)]  # 50% saved
    f = findings.savings_grow_with_size(small + big)
    assert f.verdict == "supported" and f.evidence.index("minilm") < f.evidence.index("smollm2")
    big[1] = cell("lora", "smollm2", 0.9, 3600)  # 10% saved
    assert findings.savings_grow_with_size(small + big).verdict == "not supported"
    assert findings.savings_grow_with_size(small).verdict == "not testable"


def test_failed_runs_do_not_count_as_results():
    cells = [cell("full-fine-tuning", "minilm", 0.9), cell("lora", "minilm", None), cell("ia3", "minilm", 0.89)]
    f = findings.match_full_fine_tuning(cells, {"minilm": 100})
    assert "1 of 1 PEFT methods" in f.evidence


def _spread(method: str, model: str, acc: float, sd: float, memory_mib: float = 1000, memory_sd: float = 0.0) -> Cell:
    return Cell(method, model, runs=3, failed=0, trainable_pct=1.0, trainable_params=1000, accuracy_mean=acc,
                accuracy_std=sd, memory_bytes=memory_mib * 2**20, time_per_step_s=1.0, memory_std=memory_sd * 2**20)


def test_a_lead_inside_the_seeds_spread_is_not_distinguishable():
    # ProPETL leads by 1 point; with 0.4 + 0.4 points of spread it is distinct, with 0.6 + 0.6 it is not
    cells = [_spread("propetl", "minilm", 0.91, 0.004), _spread("lora", "minilm", 0.90, 0.004)]
    assert findings.propetl_best(cells).verdict == "supported"
    cells = [_spread("propetl", "minilm", 0.91, 0.006), _spread("lora", "minilm", 0.90, 0.006)]
    f = findings.propetl_best(cells)
    assert f.verdict == "not distinguishable" and "91.0 ± 0.6%" in f.evidence
    # ... and so is a deficit inside it
    cells = [_spread("propetl", "minilm", 0.90, 0.006), _spread("lora", "minilm", 0.91, 0.006)]
    assert findings.propetl_best(cells).verdict == "not distinguishable"


def test_full_fine_tuning_floor_widens_with_its_seed_spread():
    # 10,000 test articles: the binomial SE is 0.3 points, the seeds' sd 2 points -> floor 86%
    cells = [_spread("full-fine-tuning", "minilm", 0.90, 0.02), _spread("lora", "minilm", 0.865, 0.0)]
    f = findings.match_full_fine_tuning(cells, {"minilm": 10_000})
    assert f.verdict == "supported" and "86.0%" in f.evidence
    cells[0] = _spread("full-fine-tuning", "minilm", 0.90, 0.01)
    assert findings.match_full_fine_tuning(cells, {"minilm": 10_000}).verdict == "not supported"


def test_a_memory_tie_with_qlora_is_not_distinguishable_and_one_contradiction_wins():
    tie = [_spread("qlora", "minilm", 0.8, 0, 500, 10), _spread("lora", "minilm", 0.8, 0, 495, 0)]
    assert findings.qlora_least_memory(tie).verdict == "not distinguishable"
    lost = [_spread("qlora", "smollm2", 0.8, 0, 900, 10), _spread("lora", "smollm2", 0.8, 0, 800, 10)]
    assert findings.qlora_least_memory(tie + lost).verdict == "not supported"
