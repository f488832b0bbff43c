"""Uni-LoRA-specific promises: every entry of every A and B is one scaled entry of the one vector θ_d, the
grouping is balanced and the projection isometric; peft's UniLoraModel as the oracle (same grouping)."""
from __future__ import annotations

import pytest
import torch

from impl_cases import fresh, perturb, prepare
from peft_parity import assert_matches_peft
from reference_impls import unilora
from reference_impls._core import count_trainable, find_targets


def _layers(model):
    return [m for m in model.modules() if isinstance(m, unilora.UniLoRALinear)]


def test_grouping_is_balanced_and_seeded():
    index = unilora.balanced_indices(103, 10, seed=1)
    counts = torch.bincount(index, minlength=10)
    assert counts.sum() == 103 and set(counts.tolist()) == {10, 11}
    assert torch.equal(index, unilora.balanced_indices(103, 10, seed=1))
    assert not torch.equal(index, unilora.balanced_indices(103, 10, seed=2))


def test_factors_read_the_one_vector_and_the_projection_is_an_isometry():
    _, model, _ = prepare("unilora", "tiny-llama", config=unilora.UniLoRAConfig(r=4, theta_d_length=64))
    layers = _layers(model)
    theta = layers[0].theta
    assert all(m.theta is theta for m in layers) and count_trainable(model) == 64
    # P maps θ_d to the concatenation of all factors: column i holds 1 / sqrt(n_i) at the n_i entries tied to i
    P = torch.zeros(sum(m.index_A.numel() + m.index_B.numel() for m in layers), 64)
    row = 0
    for m in layers:
        for index, scale in ((m.index_A, m.scale_A), (m.index_B, m.scale_B)):
            P[torch.arange(row, row + index.numel()), index.flatten()] = scale.flatten()
            row += index.numel()
    torch.testing.assert_close(P.T @ P, torch.eye(64), atol=1e-6, rtol=0)  # orthonormal columns
    flat = torch.cat([t.flatten() for m in layers for t in m.factors()])
    torch.testing.assert_close(flat, P @ theta.detach(), atol=1e-7, rtol=0)
    x = torch.randn(2, 32)
    A, B = layers[0].factors()
    torch.testing.assert_close(layers[0](x), layers[0].base(x) + x @ (B @ A).T, atol=1e-6, rtol=1e-6)


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-t5", "tiny-llama", "tiny-gpt2"])
def test_matches_peft_unilora(arch):
    peft = pytest.importorskip("peft")
    config = unilora.UniLoRAConfig(r=4, theta_d_length=64)
    ours = unilora.apply(fresh(arch), config)
    perturb(ours)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.UniLoraConfig(
        r=4, theta_d_length=64, proj_seed=42, target_modules=names, fan_in_fan_out=arch == "tiny-gpt2"))
    inner = theirs.base_model.model
    for name in names:  # the same grouping and scales
        mine, layer = ours.get_submodule(name), inner.get_submodule(name)
        assert torch.equal(mine.index_A, layer.unilora_indices_A["default"])
        assert torch.equal(mine.index_B, layer.unilora_indices_B["default"])
        torch.testing.assert_close(mine.scale_A, layer.unilora_scales_A["default"])
    first = ours.get_submodule(names[0])

    def link(mine, layer):  # θ_d is shared: linked once, with the first layer
        return [(mine.theta, layer.unilora_theta_d["default"])] if mine is first else []

    assert_matches_peft(ours, theirs, names, link, mergeable=True)
