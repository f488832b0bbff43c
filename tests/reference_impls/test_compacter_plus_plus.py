"""Compacter++-specific promises: PHM projections W = Σ A_i ⊗ s_i t_i with one shared set of A_i, one adapter
per block in the Pfeiffer placement, and the count n³ + L (rank · 2 (d + k) + k + d).

No peft oracle: peft 0.21 has no Compacter. AdapterHub's `adapters` is not a test dependency; the one-off
comparison with its CompacterPlusPlusConfig is recorded in reference_impls/compacter_plus_plus.py.
"""
from __future__ import annotations

import pytest
import torch

from impl_cases import batch_for, fresh, logits, perturb
from reference_impls import compacter_plus_plus as cpp
from reference_impls._adapters import blocks, hidden_of, with_hidden
from reference_impls._core import count_trainable
from reference_impls.compacter import PHMRule

CONFIG = cpp.CompacterPlusPlusConfig(reduction_factor=4, phm_dim=4, phm_rank=2)


def test_projection_weight_is_a_sum_of_kronecker_products_with_rank_limited_fast_factors():
    rule = PHMRule(4)
    layer = cpp.PHMLinear(32, 8, rule, rank=2)
    expected = sum(torch.kron(rule.A[i], layer.s[i] @ layer.t[i]) for i in range(4))  # (8, 32)
    torch.testing.assert_close(layer.weight(), expected, atol=1e-6, rtol=1e-6)
    assert all(torch.linalg.matrix_rank(layer.s[i] @ layer.t[i]) == 2 for i in range(4))
    with torch.no_grad():
        layer.b.normal_()
    x = torch.randn(2, 3, 32)
    torch.testing.assert_close(layer(x), x @ expected.T + layer.b, atol=1e-5, rtol=1e-5)


def test_one_adapter_per_block_and_one_shared_set_of_slow_matrices():
    model = cpp.apply(fresh("tiny-llama"), CONFIG)
    adapters = [m for m in model.modules() if isinstance(m, cpp.CompacterBottleneck)]
    assert [block.pfeiffer_adapter for _, block in blocks(model)] == adapters  # after each block's FFN, nowhere else
    assert all(p._rule[0] is model.phm_rule for a in adapters for p in (a.down, a.up))
    assert [n for n, _ in model.named_parameters() if n.endswith(".A")] == ["phm_rule.A"]


def test_count_is_n_cubed_plus_per_block_factors_and_biases():
    model = cpp.apply(fresh("tiny-bert"), CONFIG)
    n, rank, d, k, L = 4, 2, 32, 8, 2
    assert count_trainable(model) == n ** 3 + L * (rank * 2 * (d + k) + k + d)


def test_adapter_output_is_the_phm_bottleneck_added_to_the_block_output():
    """LLaMA: y ← y + U gelu(D y), with U, D the PHM weights, recomputed with hooks on the base model."""
    model = cpp.apply(fresh("tiny-llama"), CONFIG)
    perturb(model, std=0.3)
    reference = fresh("tiny-llama")

    def branch(a, y):
        z = torch.nn.functional.gelu(y @ a.down.weight().T + a.down.b)
        return z @ a.up.weight().T + a.up.b

    for (_, block), (_, mine) in zip(blocks(reference), blocks(model)):
        a = mine.pfeiffer_adapter
        block.register_forward_hook(
            lambda m, args, out, a=a: with_hidden(out, hidden_of(out) + branch(a, hidden_of(out))))
    batch = batch_for(model)
    expected = logits(reference, batch)
    torch.testing.assert_close(logits(model, batch), expected, atol=1e-5, rtol=1e-5)
    assert (expected - logits(fresh("tiny-llama"), batch)).abs().max() > 0.1


def test_phm_dim_must_divide_the_projection_sizes():
    with pytest.raises(ValueError, match="phm_dim"):
        cpp.apply(fresh("tiny-bert"), cpp.CompacterPlusPlusConfig(phm_dim=3, reduction_factor=4))
