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
