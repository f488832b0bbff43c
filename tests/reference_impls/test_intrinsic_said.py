"""Intrinsic-SAID-specific promises: d splits into d - m coordinates and m scales, the Fastfood transform
is what it claims, the projection is regenerated from its seed, and the update lies in one d-dim subspace."""
from __future__ import annotations

import math

import torch

from impl_cases import batch_for, fresh, logits, perturb, prepare, run_training
from reference_impls import intrinsic_said as said
from reference_impls._core import count_trainable, trainable_state


def _sylvester(L: int) -> torch.Tensor:
    H = torch.ones(1, 1)
    while H.shape[0] < L:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H


def test_fwht_is_the_walsh_hadamard_matrix():
    x = torch.randn(3, 16)
    torch.testing.assert_close(said.fwht(x), x @ _sylvester(16).T, atol=1e-5, rtol=1e-5)


def test_count_is_d_minus_m_coordinates_plus_m_scales():
    for arch in ("tiny-bert", "tiny-llama"):
        m = len(list(fresh(arch).parameters()))  # unique tensors (BERT's tied decoder counted once)
        model = said.apply(fresh(arch), said.IntrinsicSAIDConfig(intrinsic_dim=100))
        assert model.said.theta.numel() == 100 - m and model.said.lam.numel() == m
        assert count_trainable(model) == 100
        did = said.apply(fresh(arch), said.IntrinsicSAIDConfig(intrinsic_dim=100, said=False))
        assert did.said.theta.numel() == 100 and did.said.lam is None and count_trainable(did) == 100


def test_dense_matrix_is_the_same_map_as_the_fastfood_transform():
    _, dense, _ = prepare("intrinsic-said", "tiny-llama")
    fast = said.apply(fresh("tiny-llama"), said.IntrinsicSAIDConfig(intrinsic_dim=100, dense=False))
    perturb(dense)
    fast.load_state_dict(dense.state_dict(), strict=False)  # same θ and λ; the projection comes from the seed
    assert fast.said.M.numel() == 0
    for a, b in zip(dense.said.deltas(), fast.said.deltas()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    batch = batch_for(dense)
    torch.testing.assert_close(logits(dense, batch), logits(fast, batch), atol=1e-4, rtol=1e-4)


def test_fastfood_is_roughly_norm_preserving():
    g = torch.Generator().manual_seed(0)
    for D in (1000, 4096):
        M = said.Fastfood(60, D, g).matrix()  # (D, 60)
        torch.testing.assert_close(M.norm(dim=0), torch.ones(60), atol=0.1, rtol=0)


def test_projection_is_regenerated_from_the_seed_and_not_saved():
    one = said.apply(fresh("tiny-bert"), said.IntrinsicSAIDConfig(intrinsic_dim=100))
    torch.manual_seed(123)  # the global RNG does not matter
    two = said.apply(fresh("tiny-bert"), said.IntrinsicSAIDConfig(intrinsic_dim=100))
    other = said.apply(fresh("tiny-bert"), said.IntrinsicSAIDConfig(intrinsic_dim=100, seed=1))
    assert torch.equal(one.said.M, two.said.M) and not torch.equal(one.said.M, other.said.M)
    assert not any(k.endswith((".M", ".G", ".B", ".Pi")) for k in one.state_dict())
    assert set(trainable_state(one)) == {"said.theta", "said.lam"}


def test_trained_update_lies_in_the_random_subspace():
    _, model, config = prepare("intrinsic-said", "tiny-llama")
    base = {n: p.detach().clone() for n, p in model.model.named_parameters()}
    run_training("intrinsic-said", model, config, steps=5, lr=0.1)
    model.said.merge()
    # Δθ_i / λ_i of every tensor, stacked: one vector of all D weights
    u = torch.cat([((p - base[n]) / l).flatten() for (n, p), l in zip(model.model.named_parameters(), model.said.lam)])
    M = model.said.M  # (D, d - m)
    assert u.norm() > 1e-3  # training moved the weights
    x = torch.linalg.lstsq(M, u[:, None]).solution
    assert (M @ x - u[:, None]).norm() < 1e-4 * u.norm()  # in the span of the d - m columns
    v = torch.randn_like(u)
    y = torch.linalg.lstsq(M, v[:, None]).solution
    assert (M @ y - v[:, None]).norm() > 0.9 * v.norm()  # a random direction of R^D is not


def test_fastfood_matrix_is_h_g_pi_h_b_over_norm_g_sqrt_D_built_by_hand():
    """P = [H diag(G) Π H diag(B)]_{1..D, 1..d} / (‖G‖ √D), H the unnormalised Sylvester Hadamard matrix."""
    P = said.Fastfood(5, 6, torch.Generator().manual_seed(3))
    L = P.L
    assert L == 8
    H = torch.ones(1, 1)
    while H.shape[0] < L:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    Pi = torch.eye(L)[P.Pi]  # row j picks entry Pi[j]: (Π x)_j = x_{Pi[j]}
    full = H @ torch.diag(P.G) @ Pi @ H @ torch.diag(P.B)  # (L, L)
    expected = full[:6, :5] / (P.G.norm() * math.sqrt(6))
    torch.testing.assert_close(P.matrix(), expected, atol=1e-5, rtol=1e-5)
