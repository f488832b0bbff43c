"""Super-Tuning-specific promises: the trained positions are the largest (or smallest) |W0| entries, the
adapted weight is W0 plus the sparse values there, Supra adds a scaled LoRA update, and peft's Super-Tuning is
the oracle on tiny Llama, BERT and T5 in both modes."""
from __future__ import annotations

import pytest
import torch

from impl_cases import fresh, perturb
from peft_parity import assert_matches_peft
from reference_impls import supertuning
from reference_impls._core import find_targets


def _layer(**kw):
    torch.manual_seed(0)
    layer = supertuning.SuperTuningLinear(torch.nn.Linear(8, 5), supertuning.SuperTuningConfig(**kw))
    with torch.no_grad():
        layer.values.normal_()
        if layer.r is not None:
            layer.B.normal_()
    return layer


@pytest.mark.parametrize("select_top", [True, False])
def test_positions_are_the_extreme_magnitudes(select_top):
    layer = _layer(sparsity=0.9, select_top=select_top)
    flat = layer.base.weight.detach().abs().flatten()
    k = int(40 * (1 - 0.9))  # 3: 1 - 0.9 is 0.0999..., so 40 (1 - 0.9) = 3.99... and int() gives 3, as in peft
    assert layer.positions.numel() == k
    order = flat.argsort(descending=select_top)
    assert set(layer.positions.tolist()) == set(order[:k].tolist())


def test_adapted_weight_is_base_plus_sparse_values_at_the_positions():
    layer = _layer(sparsity=0.75)
    W = layer.base.weight.detach().clone()
    for p, v in zip(layer.positions.tolist(), layer.values):
        W[p // 8, p % 8] += v
    x = torch.randn(3, 8)
    torch.testing.assert_close(layer(x), x @ W.T + layer.base.bias)
    changed = (W != layer.base.weight).sum().item()
    assert changed == layer.positions.numel() == 10


def test_supra_adds_lora_scaled_by_alpha_over_r_with_alpha_defaulting_to_2r():
    layer = _layer(sparsity=0.75, r=2)
    x = torch.randn(3, 8)
    expected = x @ (layer.base.weight + layer.sparse_delta()).T + layer.base.bias + (4 / 2) * x @ layer.A.T @ layer.B.T
    torch.testing.assert_close(layer(x), expected)
    assert _layer(sparsity=0.75, r=2, alpha=6).scaling == 3


def test_sparsity_that_leaves_nothing_is_refused():
    with pytest.raises(ValueError, match="leaves no trainable entry"):
        _layer(sparsity=0.99)  # 40 entries * 0.01 -> 0


def _link(mine, layer):
    pairs = [(mine.values, layer.supertuning_values["default"])]
    if mine.r is not None:
        pairs += [(mine.A, layer.supertuning_lora_A["default"].weight), (mine.B, layer.supertuning_lora_B["default"].weight)]
    return pairs


@pytest.mark.peft_oracle
@pytest.mark.parametrize("r", [None, 4])
@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-bert", "tiny-t5"])
def test_matches_peft_supertuning(arch, r):
    peft = pytest.importorskip("peft")
    config = supertuning.SuperTuningConfig(sparsity=0.9, r=r)
    ours = supertuning.apply(fresh(arch), config)
    perturb(ours)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.SupertuningConfig(sparsity=0.9, r=r, target_modules=names))
    for name in names:
        assert torch.equal(ours.get_submodule(name).positions,
                           theirs.base_model.model.get_submodule(name).supertuning_indices["default"].long())
    assert_matches_peft(ours, theirs, names, _link, mergeable=True)
