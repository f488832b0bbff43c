"""Property-based tests (hypothesis) of the calculators' numeric inputs: --set values, --seq, --batch, --memory.

Whatever a user types, `params`, `memory` and `fit` exit 0, 1 or 2, never with a traceback; and an answer
given with exit 0 is right: a positive count equal to the formula on the value given, a positive estimate,
a budget that parsed to what the text says. Runs in-process through the console entry point.
"""
from __future__ import annotations

import json
import re

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from tests.conftest import assert_answered as answered, run_main as invoke  # noqa: E402

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
NUMBERISH = st.one_of(
    st.integers(min_value=-10**30, max_value=10**30).map(str),
    st.integers(min_value=-3, max_value=2000).map(str),
    st.sampled_from(["", "nan", "inf", "-inf", "1e3", "8.0", "0x10", "+8", "٨", "8_0", "9" * 5000, "\x00", "-0"]),
    st.text(max_size=10),
)


@SETTINGS
@given(r=NUMBERISH)
def test_params_rank(r):
    code, out, err = invoke("params", "lora", "-m", "gpt2", "-s", f"r={r}", "-f", "json")
    answered(code, out, err)
    if code == 0:
        data = json.loads(out)
        rank = data["values"]["r"]
        assert 1 <= rank <= 768 and data["trainable"] == 12 * rank * (768 + 2304) > 0


@SETTINGS
@given(seq=NUMBERISH, batch=NUMBERISH)
def test_memory_seq_and_batch(seq, batch):
    code, out, err = invoke("memory", "lora", "-m", "gpt2", "--seq", seq, "--batch", batch, "-f", "json")
    answered(code, out, err)
    if code == 0:
        data = json.loads(out)
        assert 1 <= data["seq"] <= 1024 and data["batch"] >= 1  # GPT-2 learned 1024 positions
        assert data["peak_bytes"] > data["allocated_bytes"] > 0


@SETTINGS
@given(amount=NUMBERISH, unit=st.sampled_from(["", "B", "GB", "GiB", "MB", "T", "kb", "PB", " GB"]))
def test_fit_memory_budget(amount, unit):
    text = amount + unit
    code, out, err = invoke("fit", "-m", "gpt2", "--memory", text, "--seq", "64", "-f", "json")
    answered(code, out, err)
    if code == 0:
        number, scale = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT])(?:i?B)?\s*", text, re.IGNORECASE).groups()
        expected = float(number) * {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[scale.upper()]
        assert json.loads(out)["budget_bytes"] == int(expected) >= 2**20
