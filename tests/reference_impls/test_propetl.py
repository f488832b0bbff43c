"""ProPETL-specific promises: one shared prototype, binary masks of the set sparsity, straight-through scores."""
from __future__ import annotations

import pytest
import torch

from impl_cases import batch_for, fresh
from reference_impls import propetl


def _model():
    return propetl.apply(fresh("tiny-llama"), propetl.ProPETLConfig(bottleneck=8, sparsity=0.5))


def _layers(model) -> list[propetl.MaskedAdapter]:
    return [m for m in model.modules() if isinstance(m, propetl.MaskedAdapter)]


def test_all_layers_share_one_prototype_and_own_their_scores():
    layers = _layers(_model())
    assert len(layers) == 2 and layers[0].prototype is layers[1].prototype
    assert layers[0].S_down is not layers[1].S_down


def test_masks_are_binary_keep_one_minus_sparsity_and_differ_across_layers():
    layers = _layers(_model())
    masks = [propetl.topk_mask(m.S_down, m.keep).detach() for m in layers]
    for mask in masks:
        assert set(mask.unique().tolist()) == {0.0, 1.0}
        assert mask.mean().item() == pytest.approx(0.5, abs=1 / mask.numel())
    assert not torch.equal(masks[0], masks[1])


def test_straight_through_gradient_of_scores_is_the_gradient_of_the_mask():
    S = torch.rand(4, 6, requires_grad=True)
    upstream = torch.randn(4, 6)
    (propetl.topk_mask(S, 0.5) * upstream).sum().backward()
    assert torch.equal(S.grad, upstream)


def test_scores_and_prototype_get_gradients():
    model = _model()
    with torch.no_grad():
        _layers(model)[0].prototype.up.weight.normal_()  # W_up = 0 would block the scores' gradient
    model(**batch_for(model)).loss.backward()
    for m in _layers(model):
        assert m.S_down.grad.abs().sum() > 0 and m.S_up.grad.abs().sum() > 0
    assert _layers(model)[0].prototype.down.weight.grad.abs().sum() > 0


def test_other_forms_are_not_implemented():
    with pytest.raises(NotImplementedError, match="lora"):
        propetl.apply(fresh("tiny-llama"), propetl.ProPETLConfig(form="lora"))
