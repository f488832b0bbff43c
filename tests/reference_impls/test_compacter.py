"""Compacter-specific promises: W = Σ A_i ⊗ s_i t_iᵀ, the A_i are one shared set, and the count is the paper's."""
from __future__ import annotations

import pytest
import torch

from impl_cases import batch_for, fresh
from reference_impls import compacter as cp
from reference_impls._core import count_trainable

CONFIG = cp.CompacterConfig(phm_dim=4, reduction_factor=4)


def test_projection_weight_is_a_sum_of_kronecker_products_of_shared_and_rank_one_factors():
    rule = cp.PHMRule(4)
    layer = cp.PHMLinear(32, 8, rule)
    expected = sum(torch.kron(rule.A[i], torch.outer(layer.s[i], layer.t[i])) for i in range(4))  # (8, 32)
    torch.testing.assert_close(layer.weight(), expected, atol=1e-6, rtol=1e-6)
    assert torch.linalg.matrix_rank(torch.outer(layer.s[0], layer.t[0])) == 1
    with torch.no_grad():
        layer.b.normal_()
    x = torch.randn(2, 3, 32)
    torch.testing.assert_close(layer(x), x @ expected.T + layer.b, atol=1e-5, rtol=1e-5)


def test_all_adapters_share_one_set_of_slow_matrices_and_all_of_them_train_it():
    model = cp.apply(fresh("tiny-llama"), CONFIG)
    adapters = [m for m in model.modules() if isinstance(m, cp.CompacterAdapter)]
    assert len(adapters) == 4  # (attention, FFN) x 2 layers
    assert all(p._rule[0] is model.phm_rule for a in adapters for p in (a.down, a.up))
    shared = [n for n, _ in model.named_parameters() if n.endswith(".A")]
    assert shared == ["phm_rule.A"]
    with torch.no_grad():  # open every up-projection so that A receives gradient through each adapter
        for a in adapters:
            a.up.s.normal_()
    model(**batch_for(model)).loss.backward()
    grad_all = model.phm_rule.A.grad.clone()
    # the gradient on A is the sum of the contributions of the individual adapters: cut one and it changes
    model.zero_grad()
    adapters[0].up._rule = (cp.PHMRule(4),)
    adapters[0].down._rule = adapters[0].up._rule
    model(**batch_for(model)).loss.backward()
    assert not torch.allclose(model.phm_rule.A.grad, grad_all)


def test_count_is_n_cubed_plus_per_block_factors_and_biases():
    model = cp.apply(fresh("tiny-bert"), CONFIG)
    n, d, k, L = 4, 32, 8, 2
    assert count_trainable(model) == n ** 3 + L * 2 * (2 * (k + d) + k + d)
    # a dense adapter of the same size would hold 2 d k weights per projection pair; Compacter holds 2 (k + d)
    assert 2 * (k + d) < 2 * d * k


def test_phm_dim_must_divide_the_projection_sizes():
    with pytest.raises(ValueError, match="phm_dim"):
        cp.apply(fresh("tiny-bert"), cp.CompacterConfig(phm_dim=3, reduction_factor=4))


def test_adapter_adds_the_phm_bottleneck_to_the_sublayer_output():
    """h = base(x); out = h + U f(D h), with U and D the PHM weights (U made non-zero)."""
    rule = cp.PHMRule(4)
    layer = cp.CompacterAdapter(torch.nn.Linear(16, 32), 8, rule, "gelu")
    with torch.no_grad():
        layer.up.s.normal_()
        layer.up.t.normal_()
        layer.up.b.normal_()
    x = torch.randn(2, 3, 16)
    h = layer.base(x)
    z = torch.nn.functional.gelu(h @ layer.down.weight().T + layer.down.b)  # (2, 3, 8)
    torch.testing.assert_close(layer(x), h + z @ layer.up.weight().T + layer.up.b, atol=1e-5, rtol=1e-5)
