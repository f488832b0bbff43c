"""NoReFT-specific promises: LoReFT's equation with an unconstrained R.

No peft oracle: peft 0.21 has no ReFT; pyreft and AdapterHub are not test dependencies (see reference_impls/noreft.py).
"""
from __future__ import annotations

import torch

from impl_cases import fresh
from reference_impls import noreft as nr
from reference_impls.loreft import ReFTIntervention, ReFTUnit


def test_unit_computes_h_plus_R_transpose_times_W_h_plus_b_minus_R_h_with_a_free_R():
    model = nr.apply(fresh("tiny-llama"), nr.NoReFTConfig(r=3, dropout=0.0))
    unit = next(m for m in model.modules() if isinstance(m, ReFTUnit)).eval()
    assert not hasattr(unit.projection, "parametrizations")  # R is a plain parameter
    R, W, b = unit.R, unit.learned_source.weight, unit.learned_source.bias
    assert not torch.allclose(R @ R.T, torch.eye(3), atol=1e-2)  # nn.Linear's init is not orthonormal
    h = torch.randn(2, 4, 32)
    torch.testing.assert_close(unit(h), h + (h @ W.T + b - h @ R.T) @ R, atol=1e-5, rtol=1e-5)


def test_with_W_equal_to_R_and_no_bias_the_edit_vanishes():
    """The − R h term: W = R, b = 0 gives Φ(h) = h exactly, whatever R is (DiReFT, without it, would not)."""
    unit = ReFTUnit(16, 3, orthogonal=False, subtract=True).eval()
    with torch.no_grad():
        unit.learned_source.weight.copy_(unit.R)
        unit.learned_source.bias.zero_()
    h = torch.randn(2, 4, 16)
    torch.testing.assert_close(unit(h), h, atol=1e-6, rtol=1e-6)


def test_interventions_hook_every_block():
    model = nr.apply(fresh("tiny-t5"), nr.NoReFTConfig(r=2))
    assert sum(isinstance(m, ReFTIntervention) for m in model.modules()) == 4  # 2 encoder + 2 decoder blocks
