"""rsLoRA-specific promises: LoRA's layer with the scale alpha / sqrt(r); peft's use_rslora=True as the oracle."""
from __future__ import annotations

import math

import pytest
import torch

from impl_cases import fresh, perturb
from peft_parity import assert_matches_peft
from reference_impls import rslora
from reference_impls._core import find_targets


def test_update_is_alpha_over_sqrt_r_times_BA():
    base = torch.nn.Linear(6, 5)
    layer = rslora.rslora_linear(base, r=4, alpha=8)
    with torch.no_grad():
        layer.B.normal_()
    x = torch.randn(3, 6)
    expected = base(x) + (8 / math.sqrt(4)) * x @ (layer.B @ layer.A).T  # 4 B A, where LoRA has 2 B A
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(layer.delta_weight(), 4.0 * layer.B @ layer.A)


def test_update_size_does_not_shrink_with_rank():
    """With A and B of i.i.d. entries, ||γ_r B A x|| grows like sqrt(r) / r under LoRA's 1/r and stays of
    order one under 1/sqrt(r) (the paper's stability argument, measured on one draw per rank)."""
    torch.manual_seed(0)
    x = torch.randn(64, 256)
    norms = {}
    for r in (4, 64):
        A, B = torch.randn(r, 256) / 16, torch.randn(128, r)  # A x has unit-variance entries
        norms[r] = ((B @ A) @ x.T).norm() / math.sqrt(r)      # γ_r = 1 / sqrt(r) (alpha = 1)
    assert 0.8 < norms[64] / norms[4] < 1.25


def _lora_link(mine, layer):
    return [(mine.A, layer.lora_A["default"].weight), (mine.B, layer.lora_B["default"].weight)]


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-t5", "tiny-llama", "tiny-gpt2"])
def test_matches_peft_use_rslora(arch):
    peft = pytest.importorskip("peft")
    config = rslora.RsLoRAConfig(r=4, alpha=8)
    ours = rslora.apply(fresh(arch), config)
    perturb(ours)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.LoraConfig(
        r=4, lora_alpha=8, use_rslora=True, lora_dropout=0.0, target_modules=names,
        fan_in_fan_out=arch == "tiny-gpt2"))
    assert theirs.base_model.model.get_submodule(names[0]).scaling["default"] == 8 / 2
    assert_matches_peft(ours, theirs, names, _lora_link, mergeable=True)
