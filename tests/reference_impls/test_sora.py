"""SoRA-specific promises: the gate between A and B, and the proximal (soft-threshold) step on the gate.

peft 0.21.2 has no SoRA tuner, so there is no peft-equivalence test: the count, identity at init, merge,
frozen weights, loss and save/load come from the generic cases (cases_wave4_f.py); these tests re-compute
the paper's equations explicitly.
"""
from __future__ import annotations

import torch
from torch import nn

from impl_cases import batch_for, fresh, perturb
from reference_impls import hooks, sora
from reference_impls._core import count_trainable


def _layer(seed: int = 0) -> sora.SoRALinear:
    torch.manual_seed(seed)
    layer = sora.SoRALinear(nn.Linear(6, 5), r=3, alpha=6)
    with torch.no_grad():
        layer.B.normal_()                             # B = 0 at init would hide the gate
        layer.gate.copy_(torch.tensor([1.5, 0.0, -0.7]))  # one closed gate
    return layer


def test_forward_is_B_times_gate_times_A_x():
    layer = _layer()
    x = torch.randn(2, 4, 6)
    W0, b0, A, B, g = layer.base.weight, layer.base.bias, layer.A, layer.B, layer.gate
    s = 6 / 3  # alpha / r_max
    expected = torch.empty(2, 4, 5)
    for i in range(2):
        for t in range(4):
            down = A @ x[i, t]                        # (r,)
            expected[i, t] = W0 @ x[i, t] + b0 + s * (B @ (g * down))
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-6)
    # ΔW = s B diag(g) A, and the closed gate removes rank 1 of B A entirely
    torch.testing.assert_close(layer.delta_weight(), s * B @ torch.diag(g) @ A, atol=1e-6, rtol=1e-6)
    keep = [0, 2]
    torch.testing.assert_close(layer.delta_weight(), s * (B[:, keep] * g[keep]) @ A[keep], atol=1e-6, rtol=1e-6)


def test_soft_threshold_is_the_l1_proximal_operator():
    g = torch.tensor([0.5, -0.5, 0.005, -0.005, 0.015, -0.015, 0.0])
    xi = 0.01
    expected = torch.tensor([0.49, -0.49, 0.0, 0.0, 0.005, -0.005, 0.0])  # sign(g) max(|g| - ξ, 0)
    torch.testing.assert_close(sora.soft_threshold_(g.clone(), xi), expected, atol=1e-7, rtol=0)
    # the same operator as argmin_z ξ|z| + (z - g)² / 2, checked on a fine grid for one entry
    z = torch.linspace(-1, 1, 200001, dtype=torch.float64)
    for gi in (0.5, -0.005, 0.015):
        best = z[torch.argmin(xi * z.abs() + (z - gi) ** 2 / 2)]
        assert abs(best.item() - sora.soft_threshold_(torch.tensor([gi], dtype=torch.float64), xi).item()) < 1e-5


def test_training_hook_soft_thresholds_every_gate_after_the_optimizer_step():
    config = sora.SoRAConfig(r_max=4, sparse_lambda=0.5, eta=0.1)  # ξ = η λ = 0.05
    model = sora.apply(fresh("tiny-llama"), config)
    perturb(model)
    layers = sora.sora_layers(model)
    after_step = hooks("sora", model, config)["after_step"]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=config.eta)
    model(**batch_for(model)).loss.backward()
    opt.step()
    with torch.no_grad():  # set after the step, so that the gradient cannot move them: two inside ±ξ
        layers[0].gate.copy_(torch.tensor([0.03, -0.04, 0.2, -0.3]))
    stepped = [m.gate.detach().clone() for m in layers]  # g − η ∇L0
    after_step(0)
    xi = 0.1 * 0.5
    for m, g in zip(layers, stepped):
        expected = torch.where(g > xi, g - xi, torch.where(g < -xi, g + xi, torch.zeros_like(g)))
        torch.testing.assert_close(m.gate.detach(), expected, atol=1e-7, rtol=0)
    assert sora.active_ranks(model) == [int((g.abs() > xi).sum()) for g in stepped]
    assert sora.active_ranks(model)[0] == 2  # the two entries inside ±ξ were closed exactly
    assert layers[0].gate.tolist()[:2] == [0.0, 0.0]


def test_a_larger_penalty_closes_more_gates_and_keeps_the_count():
    def train(lam: float) -> tuple[list[int], int]:
        torch.manual_seed(0)
        config = sora.SoRAConfig(r_max=4, alpha=8, sparse_lambda=lam, eta=1e-2)
        model = sora.apply(fresh("tiny-bert"), config)
        n = count_trainable(model)
        after_step = hooks("sora", model, config)["after_step"]
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for step in range(10):
            opt.zero_grad()
            model(**batch_for(model)).loss.backward()
            opt.step()
            after_step(step)
        assert count_trainable(model) == n  # closed gates stay in the tensors until pruned
        return sora.active_ranks(model), n

    open_ranks, _ = train(0.0)
    sparse_ranks, _ = train(20.0)  # ξ = 0.2 a step: every N(0, 1) gate below ~2 closes within 10 steps
    assert all(r == 4 for r in open_ranks)
    assert sum(sparse_ranks) < sum(open_ranks)
