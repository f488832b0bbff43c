"""Threshold-Mask promises: the forward pass uses W ⊙ 1[s ≥ τ] on frozen weights, scores learn through the
straight-through estimator, the initial sparsity is as configured, and merging writes W ⊙ M."""
from __future__ import annotations

import torch
from torch.nn import functional as F

from impl_cases import batch_for, fresh, logits, run_training
from reference_impls import threshold_mask as tm
from reference_impls._core import merge, unmerge

CONFIG = tm.ThresholdMaskConfig()


def _layers(model):
    return [m for m in model.modules() if isinstance(m, tm.ThresholdMaskLinear)]


def test_forward_multiplies_frozen_weights_by_the_thresholded_mask():
    torch.manual_seed(0)
    layer = _layers(tm.apply(fresh("tiny-llama"), CONFIG))[0]
    x = torch.randn(2, 5, layer.base.in_features)
    M = (layer.scores > CONFIG.threshold).float()
    assert 0 < (M == 0).sum() < M.numel()  # a real mask, not all ones or all zeros
    torch.testing.assert_close(layer(x), F.linear(x, layer.base.weight * M, layer.base.bias), atol=0, rtol=0)


def test_scores_receive_the_straight_through_gradient():
    torch.manual_seed(0)
    layer = _layers(tm.apply(fresh("tiny-bert"), CONFIG))[0]
    x = torch.randn(2, 5, layer.base.in_features)
    target = torch.randn(2, 5, layer.base.out_features)
    ((layer(x) - target) ** 2).sum().backward()
    W_masked = (layer.base.weight * (layer.scores > CONFIG.threshold).float()).detach().requires_grad_(True)
    ((F.linear(x, W_masked, layer.base.bias) - target) ** 2).sum().backward()
    # ∂L/∂s := ∂L/∂M = ∂L/∂W' ⊙ W   (STE: the threshold's derivative is taken as 1)
    torch.testing.assert_close(layer.scores.grad, W_masked.grad * layer.base.weight, atol=1e-6, rtol=1e-5)
    assert layer.base.weight.grad is None  # the pretrained weight itself is frozen


def test_initial_sparsity_is_init_sparsity_and_zero_starts_equal():
    torch.manual_seed(0)
    model = tm.apply(fresh("tiny-llama"), CONFIG)
    masks = torch.cat([(l.scores > CONFIG.threshold).flatten() for l in _layers(model)])  # ~14k entries
    assert abs((~masks).float().mean().item() - CONFIG.init_sparsity) < 0.01  # std of the share: 0.002
    batch = batch_for(model)
    dense = tm.apply(fresh("tiny-llama"), tm.ThresholdMaskConfig(init_sparsity=0.0))
    assert torch.equal(logits(dense, batch), logits(fresh("tiny-llama"), batch))
    assert not torch.allclose(logits(model, batch), logits(fresh("tiny-llama"), batch), atol=1e-3)


def test_training_changes_the_mask_and_merge_writes_W_times_mask():
    torch.manual_seed(0)
    model = tm.apply(fresh("tiny-bert"), CONFIG)
    before = [(l.scores > CONFIG.threshold).clone() for l in _layers(model)]
    W0 = [l.base.weight.detach().clone() for l in _layers(model)]
    run_training("threshold-mask", model, CONFIG, steps=10)
    after = [(l.scores > CONFIG.threshold).clone() for l in _layers(model)]
    assert any(not torch.equal(a, b) for a, b in zip(after, before))  # the binary mask itself was learned
    batch = batch_for(model)
    unmerged = logits(model, batch)
    merge(model)
    for l, w0, m in zip(_layers(model), W0, after):
        assert torch.equal(l.base.weight, w0 * m)  # merged model = W ⊙ M, nothing else
    torch.testing.assert_close(logits(model, batch), unmerged, atol=1e-5, rtol=1e-5)
    unmerge(model)
    assert all(torch.equal(l.base.weight, w0) for l, w0 in zip(_layers(model), W0))


def test_scores_start_on_the_authors_range_and_the_threshold_is_strict():
    """s ~ U[-c, (c + τ) / ρ - c) (get_init_scales of MaskedLinear1); M = 1[s > τ] (binarizer_fn1)."""
    torch.manual_seed(0)
    config = tm.ThresholdMaskConfig(threshold=0.01, init_sparsity=0.25, init_scale=0.02)
    layer = _layers(tm.apply(fresh("tiny-llama"), config))[0]
    hi = (0.02 + 0.01) / 0.25 - 0.02  # 0.1
    assert layer.scores.min() >= -0.02 and layer.scores.max() < hi
    assert layer.scores.min() < -0.015 and layer.scores.max() > hi - 0.005  # the whole range is used
    with torch.no_grad():
        layer.scores[0, 0] = 0.01  # exactly τ: masked out
        layer.scores[0, 1] = 0.0101
    M = layer.mask()
    assert M[0, 0] == 0 and M[0, 1] == 1
