"""DiReFT-specific promises: Φ(h) = h + W2ᵀ(W1 h + b), no orthonormality and no subtraction.

No peft oracle: peft 0.21 has no ReFT; pyreft and AdapterHub are not test dependencies (see reference_impls/direft.py).
"""
from __future__ import annotations

import torch

from impl_cases import fresh
from reference_impls import direft as dr
from reference_impls.loreft import ReFTUnit


def test_unit_computes_h_plus_W2_transpose_times_W1_h_plus_b():
    model = dr.apply(fresh("tiny-bert"), dr.DiReFTConfig(r=3, dropout=0.0))
    unit = next(m for m in model.modules() if isinstance(m, ReFTUnit)).eval()
    assert not hasattr(unit.projection, "parametrizations")
    W2, W1, b = unit.R, unit.learned_source.weight, unit.learned_source.bias
    h = torch.randn(2, 4, 32)
    torch.testing.assert_close(unit(h), h + (h @ W1.T + b) @ W2, atol=1e-5, rtol=1e-5)


def test_no_subtraction_a_zero_source_leaves_h_unchanged():
    """With W1 = 0 and b = 0 the edit is zero (NoReFT would still subtract W2ᵀ W2 h)."""
    unit = ReFTUnit(16, 3, orthogonal=False, subtract=False).eval()
    with torch.no_grad():
        unit.learned_source.weight.zero_()
        unit.learned_source.bias.zero_()
    h = torch.randn(2, 4, 16)
    assert torch.equal(unit(h), h)
    noreft = ReFTUnit(16, 3, orthogonal=False, subtract=True).eval()
    noreft.load_state_dict(unit.state_dict())
    assert (noreft(h) - h).abs().max() > 1e-2


def test_dropout_acts_on_the_edited_representation_in_training_only():
    unit = ReFTUnit(16, 2, orthogonal=False, subtract=False, dropout=0.5)
    h = torch.randn(4, 8, 16)
    assert (unit.train()(h) == 0).any()       # dropout zeroes entries of h + W2ᵀ(W1 h + b), as pyreft does
    assert not (unit.eval()(h) == 0).any()
