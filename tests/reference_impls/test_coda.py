"""CoDA-specific promises: the soft top-k keeps Σλ = k, only the k routed tokens enter the frozen layer,
the others take the adapter path alone, and the router is trained through λ."""
from __future__ import annotations

import math

import torch

from impl_cases import batch_for, fresh
from reference_impls import coda
from reference_impls._adapters import hidden_of

CONFIG = coda.CoDAConfig(bottleneck=8, reduction_factor=3)


def test_soft_top_k_sums_to_k_and_ranks_like_the_scores():
    s = torch.randn(3, 12)
    lam = coda.soft_top_k(s, 4, eps=0.5)
    torch.testing.assert_close(lam.sum(-1), torch.full((3,), 4.0), atol=1e-4, rtol=0)
    assert ((lam > 0) & (lam < 1)).all()
    assert torch.equal(lam.argsort(-1), s.argsort(-1))  # monotone in the scores


def test_soft_top_k_approaches_the_hard_top_k_as_epsilon_shrinks():
    s = torch.randn(2, 10)
    hard = torch.zeros_like(s).scatter(1, s.topk(3, -1).indices, 1.0)
    lam = coda.soft_top_k(s, 3, eps=1e-3, steps=60)
    torch.testing.assert_close(lam, hard, atol=1e-2, rtol=0)


def test_soft_top_k_gradient_keeps_the_budget():
    s = torch.randn(2, 10, requires_grad=True)
    lam = coda.soft_top_k(s, 3, eps=1.0)
    (g,) = torch.autograd.grad(lam.sum(), s)  # Σλ = k whatever s is, so its gradient vanishes
    torch.testing.assert_close(g, torch.zeros_like(g), atol=1e-5, rtol=0)
    (g1,) = torch.autograd.grad(coda.soft_top_k(s, 3, eps=1.0)[0, 0], s)
    assert g1[0, 0] > 0 and (g1[0, 1:] <= 0).all()  # raising s_0 raises λ_0 at the others' expense


def test_unselected_tokens_skip_the_frozen_layer_and_take_the_adapter_path():
    torch.manual_seed(0)
    model = coda.apply(fresh("tiny-bert"), CONFIG)
    layer = model.bert.encoder.layer[0]
    with torch.no_grad():
        layer.adapter.up.weight.normal_()
    seen = []
    layer.base.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    X = torch.randn(2, 12, 32)
    Y = hidden_of(layer(X))
    k = math.ceil(12 / 3)
    assert seen == [torch.Size([2, k, 32])]  # the heavy layer saw k tokens per sequence, not 12
    I = layer.last_selected  # (2, k)
    light = X + layer.adapter(X)
    for b in range(2):
        rest = [i for i in range(12) if i not in I[b].tolist()]
        assert torch.equal(Y[b, rest], light[b, rest])  # bitwise: the frozen layer never touched them
        lam = coda.soft_top_k(X @ layer.router, k, CONFIG.temperature)[b, I[b]][:, None]
        X_I = X[b:b + 1, I[b]]
        F_I = hidden_of(layer.base(X_I))
        torch.testing.assert_close(Y[b, I[b]], light[b, I[b]] + lam * (F_I[0] - X_I[0]), atol=1e-5, rtol=1e-5)
    selected_scores = (X @ layer.router).gather(1, I)
    assert (selected_scores.min(-1).values >= (X @ layer.router).topk(k, -1).values[:, -1] - 1e-6).all()


def test_router_receives_gradient_through_lambda():
    model = coda.apply(fresh("tiny-bert"), CONFIG)
    model(**batch_for(model)).loss.backward()
    assert all(layer.router.grad is not None and layer.router.grad.abs().sum() > 0
               for layer in model.bert.encoder.layer)


def test_soft_top_k_is_a_shifted_sigmoid_with_the_implicit_gradient():
    """λ_i = σ((s_i − τ)/ε) with one τ per row, and ∂λ_i/∂s_j = σ'_i/ε (δ_ij − σ'_j / Σ_l σ'_l)."""
    s = torch.randn(2, 9, dtype=torch.float64, requires_grad=True)
    eps, k = 0.7, 3
    lam = coda.soft_top_k(s, k, eps=eps, steps=60)
    tau = s - eps * torch.logit(lam)  # (2, 9): the same τ for every token of a row
    torch.testing.assert_close(tau, tau[:, :1].expand_as(tau), atol=1e-8, rtol=0)
    d = (lam * (1 - lam)).detach()  # σ'
    for b in range(2):
        expected = torch.diag(d[b]) / eps - torch.outer(d[b], d[b]) / (eps * d[b].sum())
        jac = torch.stack([torch.autograd.grad(lam[b, i], s, retain_graph=True)[0][b] for i in range(9)])
        torch.testing.assert_close(jac, expected, atol=1e-8, rtol=1e-6)
