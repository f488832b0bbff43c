"""HRA-specific promises: W0 H with H a product of Householder reflections (orthogonal, H − I of rank <= r),
the paired init that makes H = I, Gram-Schmidt, and peft's HRA as the oracle."""
from __future__ import annotations

import pytest
import torch

from impl_cases import fresh, perturb
from peft_parity import assert_matches_peft
from reference_impls import hra
from reference_impls._core import find_targets


def _layer(d_in=8, d_out=6, r=3, apply_gs=False):
    torch.manual_seed(0)
    return hra.HRALinear(torch.nn.Linear(d_in, d_out), r=r, apply_gs=apply_gs)


def _explicit_H(U):
    H = torch.eye(U.shape[0])
    for i in range(U.shape[1]):  # H = R_1 R_2 ... R_r
        u = U[:, i:i + 1]
        H = H @ (torch.eye(U.shape[0]) - 2 * u @ u.T / (u.T @ u))
    return H


def test_forward_is_W0_times_product_of_reflections():
    layer = _layer()
    H = _explicit_H(layer.U)
    torch.testing.assert_close(layer.H(), H, atol=1e-6, rtol=1e-6)
    x = torch.randn(4, 8)
    expected = x @ (layer.base.weight @ H).T + layer.base.bias
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-6)


def test_H_is_orthogonal_and_H_minus_I_has_rank_at_most_r():
    H = _layer(d_in=12, r=3).H()
    torch.testing.assert_close(H.T @ H, torch.eye(12), atol=1e-6, rtol=0)
    assert torch.linalg.matrix_rank(H - torch.eye(12)).item() == 3


def test_paired_init_gives_identity_for_even_r():
    layer = _layer(r=4)
    assert torch.equal(layer.U[:, 0], layer.U[:, 1]) and torch.equal(layer.U[:, 2], layer.U[:, 3])
    torch.testing.assert_close(layer.H(), torch.eye(8), atol=1e-6, rtol=0)


def test_gram_schmidt_gives_one_reflection_across_an_r_dimensional_subspace():
    layer = _layer(d_in=10, r=3, apply_gs=True)
    Q = layer.unit_vectors()
    torch.testing.assert_close(Q.T @ Q, torch.eye(3), atol=1e-6, rtol=0)
    Qr, _ = torch.linalg.qr(layer.U)  # the same span, orthonormalised independently
    torch.testing.assert_close(Q @ Q.T, Qr @ Qr.T, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer.H(), torch.eye(10) - 2 * Q @ Q.T, atol=1e-6, rtol=0)
    assert not torch.isnan(layer.H()).any()


def _hra_link(mine, layer):
    return [(mine.U, layer.hra_u["default"])]


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch,apply_gs", [("tiny-bert", False), ("tiny-t5", False), ("tiny-llama", False),
                                           ("tiny-llama", True)])
def test_matches_peft_hra(arch, apply_gs):
    peft = pytest.importorskip("peft")
    config = hra.HRAConfig(r=4, apply_gs=apply_gs)
    ours = hra.apply(fresh(arch), config)
    perturb(ours)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.HRAConfig(r=4, apply_GS=apply_gs, target_modules=names))
    assert_matches_peft(ours, theirs, names, _hra_link, mergeable=True)
