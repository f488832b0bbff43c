"""BitFit-specific promises."""
from __future__ import annotations

import pytest

from impl_cases import fresh
from reference_impls import bitfit
from reference_impls._core import count_trainable


def test_trains_exactly_the_biases_including_layernorm():
    model = bitfit.apply(fresh("tiny-bert"), bitfit.BitFitConfig())
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "bert.encoder.layer.0.attention.self.query.bias" in trained
    assert "bert.encoder.layer.0.output.LayerNorm.bias" in trained
    assert all(n.endswith(".bias") for n in trained)
    assert trained == {n for n, _ in model.named_parameters() if n.endswith(".bias")}  # every bias, nothing else


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-t5"])
def test_bias_free_model_has_nothing_to_train(arch):
    assert count_trainable(bitfit.apply(fresh(arch), bitfit.BitFitConfig())) == 0
