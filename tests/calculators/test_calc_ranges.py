"""The range grammar of hyperparameters (peftkb/ranges.py) and the one boundary that checks values against it."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace as NS

import pytest
import yaml

from peftkb.calculators.architecture import architecture_from_config
from peftkb.calculators.params import check_values, count_trainable
from peftkb.errors import UsageError
from peftkb.ranges import Range, RangeError, range_problems

ROOT = Path(__file__).resolve().parents[2]
LLAMA = dict(model_type="llama", hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=100)


@pytest.mark.parametrize("text, inside, outside", [
    ("[0, 1]", [0, 0.5, 1], [-0.1, 1.1]),
    ("(0, 1)", [0.5, 1e-9], [0, 1]),
    ("[0, 1)", [0, 0.99], [1, -1]),
    ("(0, 1]", [1, 0.01], [0, 2]),
    ("1..8", [1, 8], [0, 9]),
    (">= 1", [1, 1e9], [0.999]),
    ("> 1", [1.001], [1]),
    ("<= 3", [3, -5], [3.5]),
    ("< 3", [2.9], [3]),
    ("(0, inf)", [1e300], [0]),
    ("1..inf", [1, 10**12], [0]),
    ("(-inf, 0]", [-1e9, 0], [0.1]),
    ("0.5..1", [0.5, 1], [0.49]),
])
def test_grammar_includes_and_excludes_the_right_ends(text, inside, outside):
    r = Range.parse(text)
    for x in inside:
        assert r.violation(x, {}) is None, (text, x)
    for x in outside:
        assert r.violation(x, {}) is not None, (text, x)


def test_bounds_are_formulas_over_symbols_and_commas_inside_calls_belong_to_them():
    r = Range.parse("1..min(d_in, d_out)")
    assert r.symbols() == {"d_in", "d_out"}
    assert r.violation(32, {"d_in": 64, "d_out": 32}) is None
    assert "above the maximum 32" in r.violation(33, {"d_in": 64, "d_out": 32})
    r = Range.parse("[1, d_model // 2)")
    assert r.violation(31, {"d_model": 64}) is None and r.violation(32, {"d_model": 64})
    assert Range.parse("0..n_virtual_tokens").violation(21, {"n_virtual_tokens": 20})


def test_nan_is_never_inside():
    assert Range.parse("(-inf, inf)").violation(math.nan, {}) is not None


@pytest.mark.parametrize("text", ["", "x", "[1,", "1..", "..2", "[1, 2, 3]", "1..2..3", "[2, 1]", "(1, 1)",
                                  "[inf, 2]", "[1, -inf]", ">= inf", "__import__('os')..2", "[1, (2]",
                                  "[1, 2 ** 3]", "lambda: 1..2", "1 if 1 else 2..3", "x" * 400])
def test_malformed_ranges_are_range_errors(text):
    with pytest.raises(RangeError):
        Range.parse(text)


def test_range_problems_flags_unknown_symbols_types_and_constant_defaults():
    hps = [NS(name="r", type="int", default=8, range="1..min(d_in, d_out)"),
           NS(name="k", type="int", default=2, range="0..r"),
           NS(name="p", type="float", default=1.5, range="[0, 1)"),
           NS(name="q", type="int", default=1, range="1..nosuch"),
           NS(name="flag", type="bool", default=True, range="[0, 1]"),
           NS(name="self_ref", type="int", default=1, range="1..self_ref"),
           NS(name="bad", type="int", default=1, range="one to two")]
    problems = dict(range_problems(hps))
    assert set(problems) == {"p", "q", "flag", "self_ref", "bad"}
    assert "outside its range" in problems["p"] and "nosuch" in problems["q"]


def test_every_range_in_the_catalog_parses():
    """The loader's check, run on the raw files (also the ranges added while this test was written)."""
    bad = []
    for path in sorted((ROOT / "catalog").glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        hps = [NS(**{"range": None, "default": None, **h}) for h in data.get("hyperparameters") or []]
        bad += [f"{path.name}: {name}: {msg}" for name, msg in range_problems(hps)]
    assert not bad, "\n".join(bad)


# -- the boundary: every numeric value, given or default, against the range on this model -----------------
def _method(**ranges):
    hps = [NS(name="r", type="int", default=8, range=ranges.get("r", "1..min(d_in, d_out)")),
           NS(name="p", type="float", default=0.1, range=ranges.get("p", "[0, 1)"))]
    tp = NS(per_target="r * (d_in + d_out)", per_layer=None, total=None, targets=["q", "v"], note=None, exact=True)
    return NS(id="toy", hyperparameters=hps, trainable_params=tp, properties=None)


@pytest.mark.parametrize("overrides, message", [({"r": 0}, "below the minimum 1"), ({"r": -8}, "below"),
                                                ({"r": 33}, "above the maximum 32"), ({"p": 1.0}, "less than 1"),
                                                ({"p": math.inf}, "finite")])
def test_values_outside_the_range_are_refused(overrides, message):
    arch = architecture_from_config(LLAMA)
    with pytest.raises(UsageError, match=message):
        count_trainable(_method(), arch, overrides)


def test_a_per_module_bound_is_checked_on_every_selected_module():
    """r=40 fits q_proj (64 -> 64) but not v_proj (64 -> 32, GQA): refused, naming v_proj."""
    arch = architecture_from_config(LLAMA)
    with pytest.raises(UsageError, match=r"v_proj \(d_in=64, d_out=32\)"):
        count_trainable(_method(), arch, {"r": 40})
    assert count_trainable(_method(), arch, {"r": 40}, targets=["q"]).trainable == 2 * 40 * 128


def test_a_bound_naming_another_hyperparameter_uses_its_value():
    arch = architecture_from_config(LLAMA)
    m = _method(p="[0, r / 100]")
    check_values(m, {"r": 8, "p": 0.08}, arch)
    with pytest.raises(UsageError, match="above the maximum"):
        check_values(m, {"r": 8, "p": 0.09}, arch)


def test_a_count_that_comes_out_zero_negative_or_absurd_is_refused():
    arch = architecture_from_config(LLAMA)
    free = NS(id="free", hyperparameters=[NS(name="k", type="int", default=1, range=None)],
              trainable_params=NS(per_target=None, per_layer=None, total="k * d_model", targets=[], note=None,
                                  exact=True), properties=None)
    assert count_trainable(free, arch).trainable == 64
    for k, message in ((0, "gives 0 trainable"), (-3, "gives -192"), (10**9, "more than 10x")):
        with pytest.raises(UsageError, match=message):
            count_trainable(free, arch, {"k": k})


def test_targets_are_given_once_and_only_to_methods_with_a_per_target_formula():
    arch = architecture_from_config(LLAMA)
    with pytest.raises(UsageError, match="targets given twice"):
        count_trainable(_method(), arch, {"target_modules": ["q"]}, targets=["v"])
    total_only = NS(id="t", hyperparameters=[], properties=None,
                    trainable_params=NS(per_target=None, per_layer="d_model", total=None, targets=[], note=None,
                                        exact=True))
    with pytest.raises(UsageError, match="no per-target formula"):
        count_trainable(total_only, arch, targets=["q"])
    # the hyperparameter alone selects the modules, as -t alone does
    by_set = count_trainable(_method(), arch, {"target_modules": ["q"]})
    assert by_set.trainable == count_trainable(_method(), arch, targets=["q"]).trainable == 2 * 8 * 128


def test_all_linear_is_every_linear_layer_but_the_output_layer():
    arch = architecture_from_config(LLAMA)
    c = count_trainable(_method(), arch, {"r": 4}, targets=["all-linear"])
    expected = sum(4 * (m.d_in + m.d_out) for m in arch.modules if m.name != "lm_head")
    assert c.trainable == expected and "lm_head" not in c.targets
    bert = architecture_from_config(dict(model_type="bert", hidden_size=64, intermediate_size=96,
                                         num_hidden_layers=2, num_attention_heads=4, vocab_size=100))
    assert "pooler.dense" in count_trainable(_method(), bert, {"r": 4}, targets=["all-linear"]).targets


def test_range_problems_at_gives_the_field_path_the_loader_reports():
    from peftkb.ranges import range_problems_at

    hps = [NS(name="r", type="int", default=8, range="1..min(d_in, d_out)"),
           NS(name="p", type="float", default=0.1, range="[0, 1")]
    assert [path for path, _ in range_problems_at(hps)] == [("hyperparameters", 1, "range")]


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60))
def test_any_text_parses_or_is_a_range_error(text):
    try:
        r = Range.parse(text)
    except RangeError:
        return
    assert isinstance(r.symbols(), set)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=-10**6, max_value=10**6))
def test_no_rank_gives_a_count_that_is_not_positive(r):
    """Whatever r a user gives, the answer is a positive count inside the range, or a UsageError."""
    arch = architecture_from_config(LLAMA)
    try:
        count = count_trainable(_method(), arch, {"r": r})
    except UsageError:
        assert not 1 <= r <= 32  # v_proj is 64 -> 32 on this GQA model
        return
    assert count.trainable == 2 * r * (128 + 96) and count.trainable > 0
