"""BEFT-specific promises: only a value-bias vector trains, it shifts the value projection's output, it folds
into the bias where there is one; peft's BEFT as the oracle."""
from __future__ import annotations

import pytest
import torch

from impl_cases import fresh, perturb, prepare
from peft_parity import assert_matches_peft
from reference_impls import beft
from reference_impls._core import count_trainable, find_targets


def test_value_bias_shift_on_the_value_projection_only():
    _, model, _ = prepare("beft", "tiny-llama")
    perturb(model)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, beft.BEFTLinear)}
    assert list(layers) == ["model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.v_proj"]
    assert count_trainable(model) == 2 * 16  # GQA: v_proj has 2 heads x 8
    layer = layers["model.layers.0.self_attn.v_proj"]
    x = torch.randn(2, 3, 32)
    torch.testing.assert_close(layer(x), x @ layer.base.weight.T + layer.delta_b)


def test_gpt2_fused_projection_gets_a_shift_on_its_whole_output():
    _, model, _ = prepare("beft", "tiny-gpt2")
    assert model.get_submodule("transformer.h.0.attn.c_attn").delta_b.shape == (96,)  # q | k | v


def test_merge_folds_into_an_existing_bias_and_keeps_the_vector_otherwise():
    with_bias = beft.BEFTLinear(torch.nn.Linear(4, 3))
    without = beft.BEFTLinear(torch.nn.Linear(4, 3, bias=False))
    x = torch.randn(2, 4)
    for layer in (with_bias, without):
        with torch.no_grad():
            layer.delta_b.normal_()
        out = layer(x)
        layer.merge()
        torch.testing.assert_close(layer(x), out)
    b0 = with_bias.base.bias.clone()
    with_bias.unmerge()
    torch.testing.assert_close(with_bias.base.bias, b0 - with_bias.delta_b)


def _link(mine, layer):
    return [(mine.delta_b, layer.beft_bias["default"], lambda t: t.view(-1))]


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-t5", "tiny-llama"])
def test_matches_peft_beft(arch):
    peft = pytest.importorskip("peft")
    config = beft.BEFTConfig()
    ours = beft.apply(fresh(arch), config)
    perturb(ours)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.BeftConfig(target_modules=names))
    assert_matches_peft(ours, theirs, names, _link, mergeable=arch == "tiny-bert")  # peft merges only into a bias
