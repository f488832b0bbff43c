"""SparseAdapter-specific promises: the SNIP mask keeps exactly the top (1 - s) share of |w · dL/dw| over all
adapters, pruned entries stay zero through training, and Large-Sparse keeps the budget."""
from __future__ import annotations

import copy

import pytest
import torch

from impl_cases import batch_for, fresh, formula_count
from reference_impls import sparseadapter as sp
from reference_impls._core import count_trainable, train

CONFIG = sp.SparseAdapterConfig(sparsity=0.5, bottleneck=8)


def _sparse_linears(model) -> list[sp.SparseLinear]:
    return [m for m in model.modules() if isinstance(m, sp.SparseLinear)]


def test_snip_mask_is_exactly_the_top_share_of_weight_times_gradient():
    base = fresh("tiny-llama")
    data = [batch_for(base, seed=s) for s in range(2)]
    model = sp.apply(copy.deepcopy(base), CONFIG, data=data)
    # recompute the saliency on the dense adapters (same seed: the same init) independently
    dense = sp.apply(copy.deepcopy(base), sp.SparseAdapterConfig(sparsity=0.0, bottleneck=8, criterion="random"))
    dense_linears = _sparse_linears(dense)
    saliency = [torch.zeros(lin.shape) for lin in dense_linears]
    for batch in data:
        dense.zero_grad()
        dense(**batch).loss.backward()
        for s, lin in zip(saliency, dense_linears):
            s += (lin.values.grad * lin.values).view(lin.shape)  # summed over batches, signed
    flat = torch.cat([s.flatten() for s in saliency]).abs()  # |w ⊙ Σ_b ∂L_b/∂w| (the authors' SNIP.score)
    keep = flat.numel() // 2
    threshold = flat.sort(descending=True).values[keep - 1]
    kept = torch.cat([torch.zeros(lin.shape).flatten().index_fill(0, lin.idx, 1.0) for lin in _sparse_linears(model)])
    assert int(kept.sum()) == keep
    assert flat[kept.bool()].min() >= threshold and flat[~kept.bool()].max() <= threshold
    # the shares differ between projections: the pruning is global, not per layer
    shares = {round(lin.idx.numel() / (lin.shape[0] * lin.shape[1]), 3) for lin in _sparse_linears(model)}
    assert len(shares) > 1


def test_pruned_entries_stay_zero_and_kept_entries_train():
    model = sp.apply(fresh("tiny-bert"), CONFIG, data=[batch_for(fresh("tiny-bert"))])
    lin = _sparse_linears(model)[0]
    before = lin.weight().detach().clone()
    train(model, batch_for(model), steps=5)
    after = lin.weight().detach()
    pruned = torch.ones(lin.shape, dtype=torch.bool).flatten().index_fill(0, lin.idx, False).view(lin.shape)
    assert (after[pruned] == 0).all() and (before[pruned] == 0).all()
    assert (after[~pruned] != before[~pruned]).float().mean() > 0.5  # (ReLU-dead units keep their rows)


def test_count_is_the_kept_weights_plus_dense_biases():
    base = fresh("tiny-llama")
    config = sp.SparseAdapterConfig(sparsity=0.4, criterion="random", bottleneck=8)
    model = sp.apply(copy.deepcopy(base), config)
    W = 2 * 2 * 2 * 32 * 8  # layers x adapters x projections x d x m
    biases = 2 * 2 * (8 + 32)
    assert count_trainable(model) == W - int(0.4 * W) + biases == formula_count("sparseadapter", base, config)


def test_large_sparse_keeps_the_dense_budget_with_a_larger_bottleneck():
    m, s = 8, 0.75
    big = sp.large_sparse_bottleneck(m, s)
    assert big == 32
    dense = sp.apply(fresh("tiny-bert"), sp.SparseAdapterConfig(sparsity=0.0, criterion="magnitude", bottleneck=m))
    large = sp.apply(fresh("tiny-bert"), sp.SparseAdapterConfig(sparsity=s, criterion="magnitude", bottleneck=big))
    weights = lambda model: sum(lin.values.numel() for lin in _sparse_linears(model))  # noqa: E731
    assert weights(large) == weights(dense)
    assert all(lin.shape[0] == big or lin.shape[1] == big for lin in _sparse_linears(large))


def test_snip_without_data_is_an_error():
    with pytest.raises(ValueError, match="data"):
        sp.apply(fresh("tiny-bert"), sp.SparseAdapterConfig(bottleneck=8))
