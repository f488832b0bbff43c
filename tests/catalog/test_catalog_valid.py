"""The real catalog: it validates, every formula evaluates to a whole count, citations are well formed."""
from __future__ import annotations

import pytest

from peftkb.formula import Formula
from peftkb.loader import load_catalog

CATALOG = load_catalog(use_cache=False)
METHODS = {m.id: m for m in CATALOG.methods}

# A Llama-2-7B-like shape (grouped-query attention switched on to exercise n_kv_heads).
SHAPE = {"n_layers": 32, "d_model": 4096, "d_ff": 11008, "n_heads": 32, "d_head": 128, "n_kv_heads": 8,
         "vocab_size": 32000, "n_params": 6_738_415_616, "n_bias": 0, "n_targets": 2}


def test_catalog_has_the_survey_experiment_methods_and_the_baseline():
    in_experiments = {m.id for m in CATALOG.methods if m.survey.in_experiments}
    assert in_experiments == {"sequential-adapter", "prompt-tuning", "prefix-tuning", "ia3", "bitfit", "child-tuning",
                              "lora", "adalora", "qlora", "mam-adapter", "propetl", "full-fine-tuning"}
    baselines = [m for m in CATALOG.methods if m.kind == "baseline"]
    assert [m.id for m in baselines] == ["full-fine-tuning"] and baselines[0].category == "baseline"


@pytest.mark.parametrize("method_id", sorted(m.id for m in CATALOG.methods if m.trainable_params))
def test_formula_evaluates_to_a_positive_count(method_id):
    m = METHODS[method_id]
    # a bool default enters a formula as 0 or 1 (prefix tuning's prefix_projection selects its MLP's terms)
    env = {**SHAPE, **{h.name: int(h.default) if isinstance(h.default, bool) else h.default
                       for h in m.hyperparameters if isinstance(h.default, (int, float, str))}}
    total = 0
    for scope, source in m.trainable_params.formulas().items():
        per = Formula.parse(source)
        if scope == "per_target":
            value = per.evaluate({**env, "d_in": 4096, "d_out": 1024, "is_ffn": 0})
        elif scope == "per_layer":
            value = per.evaluate(env) * SHAPE["n_layers"]
        else:
            value = per.evaluate(env)
        total += value
    if m.trainable_params.exact:
        assert total == int(total), f"{method_id}: {total} is not a whole count"
    assert total >= 0
    # zero at the defaults, by design: bias methods on a bias-free model; peft's empty defaults
    # (no trainable tokens listed, no LoRA experts given to X-LoRA)
    if m.id not in ("bitfit", "u-s-bitfit", "trainable-tokens", "xlora"):
        assert total > 0


@pytest.mark.parametrize("method_id", sorted(METHODS))
def test_papers_have_an_identifier_or_url(method_id):
    for paper in METHODS[method_id].papers:
        assert paper.arxiv or paper.doi or paper.url, f"{method_id}: '{paper.title}' cannot be looked up"
        assert paper.authors and all(a.strip() == a and a for a in paper.authors)


def test_original_paper_is_first_when_present():
    for m in CATALOG.methods:
        roles = [p.role for p in m.papers]
        if "original" in roles:
            assert roles[0] == "original", m.id


def test_survey_placement_matches_category_for_high_confidence():
    for m in CATALOG.methods:
        if m.survey.confidence == "high":
            assert m.category == m.survey.leaf, m.id
