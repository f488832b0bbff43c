"""PSOFT-specific promises: A and B span W0's principal subspace (s B A = U_r S_r V_rᵀ), R is a scaled Cayley
rotation between them and ΔW = s B (R − I) A; peft's PsoftModel as the oracle."""
from __future__ import annotations

import pytest
import torch

from impl_cases import fresh, perturb
from peft_parity import assert_matches_peft
from reference_impls import psoft
from reference_impls._core import Target, find_targets


def _layer(**kw):
    torch.manual_seed(0)
    base = torch.nn.Linear(8, 6).requires_grad_(False)
    layer = psoft.PSOFTLinear(Target("x", base, (), slice(0, 6)), psoft.PSOFTConfig(r=3, alpha=6, **kw))
    with torch.no_grad():
        for p in layer.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn_like(p))
    return layer


def test_frozen_factors_are_the_principal_subspace():
    layer = _layer()
    U, S, Vh = torch.linalg.svd(layer.base.weight.detach())
    torch.testing.assert_close(layer.A @ layer.A.T, torch.eye(3), atol=1e-6, rtol=0)  # orthonormal rows
    torch.testing.assert_close(2.0 * layer.B @ layer.A, U[:, :3] @ torch.diag(S[:3]) @ Vh[:3], atol=1e-5, rtol=1e-5)


def test_update_is_s_B_times_scaled_cayley_minus_identity_times_A():
    layer = _layer()
    Q = torch.zeros(3, 3)
    rows, cols = torch.triu_indices(3, 3, 1)
    Q[rows, cols] = layer.Q.detach()
    Q = Q - Q.T
    I = torch.eye(3)  # noqa: E741
    C = (I + Q) @ torch.linalg.inv(I - Q)
    torch.testing.assert_close(C @ C.T, I, atol=1e-5, rtol=0)  # orthogonal before the two vectors
    R = torch.diag(layer.b) @ C @ torch.diag(layer.a)
    delta = 2.0 * layer.B @ (R - I) @ layer.A
    torch.testing.assert_close(layer.delta_weight(), delta, atol=1e-5, rtol=1e-5)
    x = torch.randn(4, 8)
    torch.testing.assert_close(layer(x), layer.base(x) + x @ delta.T, atol=1e-5, rtol=1e-5)


def test_counts_for_the_options():
    assert sum(p.numel() for p in _layer().parameters() if p.requires_grad) == 3 + 6
    assert sum(p.numel() for p in _layer(scaling_vectors=False).parameters() if p.requires_grad) == 3
    assert sum(p.numel() for p in _layer(orthogonal=False).parameters() if p.requires_grad) == 9 + 6


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch,neumann", [("tiny-bert", False), ("tiny-t5", False), ("tiny-llama", False),
                                          ("tiny-llama", True)])
def test_matches_peft_psoft(arch, neumann):  # peft's PSOFT reads nn.Linear weights, so not GPT-2's Conv1D
    peft = pytest.importorskip("peft")
    config = psoft.PSOFTConfig(r=4, alpha=4, use_cayley_neumann=neumann)
    ours = psoft.apply(fresh(arch), config)
    perturb(ours)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.PsoftConfig(r=4, psoft_alpha=4, use_cayley_neumann=neumann,
                                                               target_modules=names))
    inner = theirs.base_model.model
    for name in names:  # the same frozen principal factors
        mine, layer = ours.get_submodule(name), inner.get_submodule(name)
        A, B = layer._get_psoft_ab_cache_buffers("default")
        torch.testing.assert_close(mine.A, A, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(mine.B, B, atol=1e-6, rtol=1e-6)

    def link(mine, layer):
        R = layer.psoft_R["default"]
        return [(mine.Q, R.weight), (mine.a, R.vector_a), (mine.b, R.vector_b)]

    assert_matches_peft(ours, theirs, names, link, mergeable=True)
