"""PEANuT-specific promises: ΔW is a small network applied to W0 itself (with residual hidden layers), zero
at init; unmerge restores W0; peft's PeanutModel as the oracle."""
from __future__ import annotations

import pytest
import torch

from impl_cases import fresh, perturb
from peft_parity import assert_matches_peft
from reference_impls import peanut
from reference_impls._core import find_targets


def _layer(depth):
    torch.manual_seed(0)
    layer = peanut.PEANuTLinear(torch.nn.Linear(6, 5), r=3, depth=depth, activation="relu", scaling=0.5)
    with torch.no_grad():
        layer.B.normal_()
    return layer


def test_depth_0_update_is_B_relu_A_W0_transposed():
    layer = _layer(0)
    W0 = layer.base.weight.detach()
    expected = 0.5 * (torch.relu(W0.T @ layer.A.T) @ layer.B.T).T  # (5, 6)
    torch.testing.assert_close(layer.delta_weight(), expected)
    x = torch.randn(2, 6)
    torch.testing.assert_close(layer(x), layer.base(x) + x @ expected.T, atol=1e-6, rtol=1e-6)


def test_depth_2_update_uses_mirrored_residuals():
    layer = _layer(2)
    W0, relu = layer.base.weight.detach(), torch.relu
    H0 = relu(W0.T @ layer.A.T)
    H1 = relu(H0 @ layer.E[0].T)
    H2 = relu(H1 @ layer.E[1].T)
    G1 = relu(H2 @ layer.D[0].T) + H1
    G2 = relu(G1 @ layer.D[1].T) + H0
    torch.testing.assert_close(layer.delta_weight(), 0.5 * (G2 @ layer.B.T).T)


def test_unmerge_restores_W0_although_the_update_depends_on_W():
    layer = _layer(1)
    W0 = layer.base.weight.detach().clone()
    x = torch.randn(2, 6)
    before = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), before, atol=1e-6, rtol=1e-6)
    layer.unmerge()
    assert torch.equal(layer.base.weight, W0)


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch,depth", [("tiny-bert", 1), ("tiny-t5", 1), ("tiny-llama", 0), ("tiny-llama", 2)])
def test_matches_peft_peanut(arch, depth):  # peft's PEANuT reads nn.Linear weights, so not GPT-2's Conv1D
    peft = pytest.importorskip("peft")
    config = peanut.PEANuTConfig(r=4, depth=depth)
    ours = peanut.apply(fresh(arch), config)
    perturb(ours)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.PeanutConfig(r=4, depth=depth, act_fn="relu", scaling=1.0,
                                                                target_modules=names))

    def link(mine, layer):
        pairs = [(mine.A, layer.peanut_A["default"].weight), (mine.B, layer.peanut_B["default"].weight)]
        pairs += [(e, enc.weight) for e, enc in zip(mine.E, layer.peanut_encoders["default"])]
        return pairs + [(d, dec.weight) for d, dec in zip(mine.D, layer.peanut_decoders["default"])]

    assert_matches_peft(ours, theirs, names, link, mergeable=True)
