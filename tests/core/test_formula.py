"""The formula language: exact evaluation, LaTeX rendering, and refusal of anything but arithmetic."""
from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, strategies as st

from peftkb.formula import ARCH_SYMBOLS, Formula, FormulaError


def test_lora_formula_on_the_llama_3_2_3b_fixture():
    # 28 layers x r=32 x [(3072 + 3072) + (3072 + 1024)]: the count peft's method comparison records for this run
    # (evidence/peft-metamathqa.yaml, lora--llama-3.2-3B-rank32)
    per_target = Formula.parse("r * (d_in + d_out)")
    q = per_target.evaluate({"r": 32, "d_in": 3072, "d_out": 3072})
    v = per_target.evaluate({"r": 32, "d_in": 3072, "d_out": 1024})
    assert 28 * (q + v) == 9_175_040


def test_division_is_exact_and_whole_results_are_ints():
    value = Formula.parse("d_model * r / 2").evaluate({"d_model": 768, "r": 3})
    assert value == 1152 and isinstance(value, int)
    assert Formula.parse("r / 3").evaluate({"r": 4}) == Fraction(4, 3)


def test_floor_division_min_max_and_unary_minus():
    f = Formula.parse("max(d_in, d_out) // 4 - min(r, 2) + -1")
    assert f.evaluate({"d_in": 10, "d_out": 30, "r": 5}) == 30 // 4 - 2 - 1


def test_float_hyperparameters_are_exact():
    assert Formula.parse("n_params * share").evaluate({"n_params": 1000, "share": 0.3}) == 300


def test_symbols_and_unknown_symbols():
    f = Formula.parse("n_layers * (2 * d_model * bottleneck + bottleneck)")
    assert f.symbols() == {"n_layers", "d_model", "bottleneck"}
    assert f.unknown_symbols(set(ARCH_SYMBOLS)) == ["bottleneck"]


def test_missing_value_is_an_error():
    with pytest.raises(FormulaError, match="no value for symbol"):
        Formula.parse("r * d_in").evaluate({"r": 1})


def test_division_by_zero_is_an_error():
    with pytest.raises(FormulaError, match="division by zero"):
        Formula.parse("d_in / r").evaluate({"d_in": 1, "r": 0})


@pytest.mark.parametrize("source", [
    "__import__('os').system('true')", "a ** 2", "a.b", "a[0]", "lambda: 1", "[1, 2]", "'text'", "True",
    "a if b else c", "a < b", "a and b", "min(a)", "min(a, b=2)", "f(a, b)", "a @ b", "a % b", "~a",
    "(yield a)", "a; b", "import os", "", "   ", "x" * 501, "min", "_secret * 2",
    "if_lt(a, b, c)", "if_lt(a, b, c, d, e)", "factor_a(d)", "factor_b(d, f, g)", "factor_a(*a)", "if_lt",
    "factor_a(d, f=2)", "min(*a, b)",
])
def test_rejected_input(source):
    with pytest.raises(FormulaError):
        Formula.parse(source)


@pytest.mark.parametrize("source, latex", [
    ("r * (d_in + d_out)", r"r \cdot \left(d_{\text{in}} + d_{\text{out}}\right)"),
    ("n_virtual_tokens * d_model", r"n_{\text{virtual tokens}} \cdot d_{\text{model}}"),
    ("n_layers * d_ff // 2", r"\left\lfloor \frac{L \cdot d_{\text{ff}}}{2} \right\rfloor"),
    ("d_ff * density // 1", r"\left\lfloor d_{\text{ff}} \cdot \mathit{density} \right\rfloor"),  # not ⌊x/1⌋
    ("a - (b - c)", r"a - \left(b - c\right)"),
    ("alpha / r", r"\frac{\alpha}{r}"),
    ("1000 * r", r"1{,}000 \cdot r"),
    ("max(r, 2)", r"\max\left(r, 2\right)"),
    ("factor_a(d_in, f)", r"\operatorname{factor\_a}\left(d_{\text{in}}, f\right)"),
    ("if_lt(2 * r, b, r, b * b)",
     r"\left\{\begin{array}{ll} r & \text{if } 2 \cdot r < b \\ b \cdot b & \text{otherwise} \end{array}\right."),
])
def test_latex_rendering(source, latex):
    assert Formula.parse(source).latex() == latex


_ints = st.integers(min_value=-10**6, max_value=10**6)


@given(a=_ints, b=_ints, c=_ints, d=st.integers(min_value=1, max_value=10**4))
def test_evaluation_agrees_with_integer_arithmetic(a, b, c, d):
    f = Formula.parse("a * (b + c) - b // d + max(a, c) - min(b, -c)")
    assert f.evaluate({"a": a, "b": b, "c": c, "d": d}) == a * (b + c) - b // d + max(a, c) - min(b, -c)


@given(st.text(max_size=40))
def test_arbitrary_text_either_parses_to_arithmetic_or_is_refused(text):
    try:
        f = Formula.parse(text)
    except FormulaError:
        return
    assert all(s.isidentifier() for s in f.symbols())


# -- if_lt and the LoKr factorisation functions ------------------------------------------------------------------
def _lycoris_factorization(dimension: int, factor: int) -> tuple[int, int]:
    """The loop of LyCORIS's factorization() (peft 0.21 tuners/lokr/layer.py), written out step by step."""
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    if factor == -1:
        factor = dimension
    m, n = 1, dimension
    while m < n:
        new_m = m + 1
        while dimension % new_m:
            new_m += 1
        if new_m > factor:
            break
        m, n = new_m, dimension // new_m
    return min(m, n), max(m, n)


@pytest.mark.parametrize("d, f, pair", [
    (256, -1, (16, 16)), (128, -1, (8, 16)), (127, -1, (1, 127)), (128, 4, (4, 32)),  # peft's docstring examples
    (4096, -1, (64, 64)), (11008, -1, (86, 128)), (12, -1, (3, 4)), (1, -1, (1, 1)),
    (128, 64, (64, 2)),    # a factor that divides comes back first, even when it is the larger one
    (96, 5, (4, 24)),      # 5 does not divide 96: the largest divisor <= 5
    (64, 0, (1, 64)), (64, -2, (1, 64)),  # no divisor > 1 is allowed
])
def test_factor_a_and_factor_b_are_lycoris_factorisation(d, f, pair):
    env = {"d": d, "f": f}
    assert (Formula.parse("factor_a(d, f)").evaluate(env), Formula.parse("factor_b(d, f)").evaluate(env)) == pair
    assert _lycoris_factorization(d, f) == pair


@given(d=st.integers(min_value=1, max_value=5000), f=st.integers(min_value=-3, max_value=200))
def test_factor_functions_agree_with_the_lycoris_loop(d, f):
    a = Formula.parse("factor_a(d, f)").evaluate({"d": d, "f": f})
    b = Formula.parse("factor_b(d, f)").evaluate({"d": d, "f": f})
    assert (a, b) == _lycoris_factorization(d, f) and a * b == d


def test_if_lt_takes_one_branch_and_evaluates_only_that_one():
    f = Formula.parse("if_lt(2 * r, n, r * (n + n), n * n / (n - 8))")
    assert f.evaluate({"r": 3, "n": 8}) == 48                      # 6 < 8: the low-rank branch; the other divides by 0
    assert f.evaluate({"r": 4, "n": 10}) == 80                     # 8 < 10: 4 * 20
    assert f.evaluate({"r": 5, "n": 10}) == 50                     # 10 < 10 is false: 100 / 2
    assert f.evaluate({"r": 6, "n": 12}) == 36                     # 12 < 12 is false: 144 / 4
    assert Formula.parse("if_lt(a, b, 1, 2)").symbols() == {"a", "b"}


def test_lokr_per_target_formula_on_llama_2_7b_shapes():
    """The catalog's LoKr formula with peft's defaults (r=8, decompose_factor=-1): 4096 -> 4096 is W_1 64 x 64 in full
    plus W_2 64 x 64 as 64 x 8 and 8 x 64 (2r = 16 < 64): 4096 + 1024 = 5,120, the count the entry's note records."""
    from peftkb.loader import load_catalog
    from peftkb.query import find_method

    f = Formula.parse(find_method(load_catalog(), "lokr").trainable_params.per_target)
    env = {"r": 8, "decompose_factor": -1, "decompose_both": 0}
    assert f.evaluate({**env, "d_in": 4096, "d_out": 4096}) == 64 * 64 + 8 * (64 + 64) == 5120
    assert f.evaluate({**env, "d_in": 4096, "d_out": 11008}) == 86 * 64 + 8 * (128 + 64) == 7040
    assert f.evaluate({**env, "d_in": 4096, "d_out": 11008, "decompose_both": 1}) == 8 * (86 + 64) + 8 * (128 + 64)
    assert f.evaluate({**env, "d_in": 64, "d_out": 64, "r": 4}) == 8 * 8 + 8 * 8        # 2r < 8 is false: full


@pytest.mark.parametrize("source, env, message", [
    ("factor_a(d, f)", {"d": Fraction(7, 2), "f": -1}, "whole number"),
    ("factor_b(d, f)", {"d": 8, "f": 0.5}, "whole number"),
    ("factor_a(d, f)", {"d": 0, "f": -1}, "at least 1"),
    ("factor_a(d, f)", {"d": -12, "f": -1}, "at least 1"),
    ("factor_a(d, f)", {"d": 10**13, "f": -1}, "larger than"),
])
def test_factor_functions_refuse_what_has_no_factorisation(source, env, message):
    with pytest.raises(FormulaError, match=message):
        Formula.parse(source).evaluate(env)


def test_lokr_params_answers_and_bad_values_are_one_line():
    from tests.conftest import run_main

    code, out, err = run_main("params", "lokr", "-m", "llama-2-7b")
    assert code == 0 and "327,680 trainable parameters" in out     # 32 blocks x (q + v) x 5,120
    code, out, err = run_main("params", "lokr", "-m", "llama-2-7b", "-s", "decompose_factor=-5")
    assert code == 2 and "Traceback" not in out + err and "decompose_factor" in err


# -- if_eq: a count that depends on a string choice -----------------------------------------------------------------
ROAD = 'if_eq(variant, "road_1", d_out, if_eq(variant, "road_2", 2 * d_out, 4 * d_out))'


def test_if_eq_takes_the_branch_of_the_matching_string_and_evaluates_only_that_one():
    f = Formula.parse(ROAD)
    assert [f.evaluate({"variant": v, "d_out": 96}) for v in ("road_1", "road_2", "road_4")] == [96, 192, 384]
    lazy = Formula.parse('if_eq(init, "mini", r * m, r / (m - m))')  # the branch not taken would divide by 0
    assert lazy.evaluate({"init": "mini", "r": 4, "m": 3}) == 12
    with pytest.raises(FormulaError, match="division by zero"):
        lazy.evaluate({"init": "balance", "r": 4, "m": 3})
    assert f.symbols() == {"variant", "d_out"} and f.string_symbols() == {"variant"}
    assert f.string_tests() == {("variant", "road_1"), ("variant", "road_2")}


@pytest.mark.parametrize("source, message", [
    ('if_eq("road_1", "road_1", 1, 2)', "first argument must be a symbol"),
    ("if_eq(variant, road_1, 1, 2)", "string literal"),
    ('if_eq(variant, "", 1, 2)', "string literal"),
    ('if_eq(min, "a", 1, 2)', "first argument must be a symbol"),
    ('if_eq(variant, "a", "b", 2)', "only numbers"),
    ('"road_1"', "only numbers"),
    ('r + "a"', "only numbers"),
    ('if_eq(variant, "a", 1)', "takes 4 arguments"),
])
def test_strings_appear_only_as_the_value_if_eq_compares_with(source, message):
    with pytest.raises(FormulaError, match=message):
        Formula.parse(source)


def test_if_eq_refuses_a_number_where_it_compares_a_string():
    with pytest.raises(FormulaError, match="'variant' must be a string"):
        Formula.parse(ROAD).evaluate({"variant": 2, "d_out": 8})


def test_if_eq_latex_is_one_case_list_with_the_strings_escaped():
    tex = Formula.parse(ROAD).latex()
    assert tex.count(r"\text{if }") == 2 and tex.count(r"\text{otherwise}") == 1
    assert r"\text{road\_2}" in tex and r"2 \cdot d_{\text{out}}" in tex
    assert r"\text{a\{b\}\$\textbackslash{}}" in Formula.parse('if_eq(x, "a{b}$\\\\", 1, 2)').latex()
