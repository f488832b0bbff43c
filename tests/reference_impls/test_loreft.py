"""LoReFT-specific promises: Φ(h) = h + Rᵀ(W h + b − R h) with orthonormal rows of R, applied to the block outputs
at the prefix and suffix positions only, one unit per position group in use.

No peft oracle: peft 0.21 has no ReFT. The authors' pyreft (and AdapterHub's ReFT) are not test dependencies;
what was read in them is recorded in reference_impls/loreft.py.
"""
from __future__ import annotations

import pytest
import torch

from impl_cases import batch_for, fresh, logits, run_training
from reference_impls import loreft as lr
from reference_impls._adapters import blocks, hidden_of, with_hidden
from reference_impls._core import count_trainable

CONFIG = lr.LoReFTConfig(r=2, prefix_positions=2, suffix_positions=3, dropout=0.0)


def _phi(unit: lr.ReFTUnit, h: torch.Tensor) -> torch.Tensor:
    """The paper's equation, written out: h + Rᵀ(W h + b − R h)."""
    R, W, b = unit.R, unit.learned_source.weight, unit.learned_source.bias
    return h + (h @ W.T + b - h @ R.T) @ R


def test_unit_computes_the_paper_equation():
    unit = lr.ReFTUnit(16, 3).eval()
    h = torch.randn(2, 4, 16)
    torch.testing.assert_close(unit(h), _phi(unit, h), atol=1e-5, rtol=1e-5)
    assert (unit(h) - h).abs().max() > 0.1


def test_edit_replaces_the_subspace_component_and_keeps_its_complement():
    """R Φ(h) = W h + b (since R Rᵀ = I), and (I − RᵀR) Φ(h) = (I − RᵀR) h."""
    unit = lr.ReFTUnit(16, 3).eval()
    h = torch.randn(2, 4, 16)
    out, R = unit(h), unit.R
    torch.testing.assert_close(out @ R.T, unit.learned_source(h), atol=1e-5, rtol=1e-5)
    P = torch.eye(16) - R.T @ R  # (16, 16): projector onto the complement of the row space of R
    torch.testing.assert_close(out @ P, h @ P, atol=1e-5, rtol=1e-5)


def test_rows_of_R_stay_orthonormal_through_training():
    model = lr.apply(fresh("tiny-llama"), CONFIG)
    run_training("loreft", model, CONFIG, steps=5, lr=0.1)
    units = [u for m in model.modules() if isinstance(m, lr.ReFTIntervention) for u in m.units]
    assert len(units) == 4  # 2 layers x (prefix, suffix)
    for u in units:
        torch.testing.assert_close(u.R @ u.R.T, torch.eye(2), atol=1e-5, rtol=1e-5)


def test_only_prefix_and_suffix_positions_of_every_block_output_are_edited():
    """Recompute the model with hooks on the base model that apply _phi at positions [:2] and [T-3:] only."""
    model = lr.apply(fresh("tiny-llama"), CONFIG)
    reference = fresh("tiny-llama")

    def edit(units, out):
        h = hidden_of(out)
        new = h.clone()
        new[:, :2] = _phi(units[0], h[:, :2])
        new[:, -3:] = _phi(units[1], h[:, -3:])
        return with_hidden(out, new)

    for (_, block), (_, mine) in zip(blocks(reference), blocks(model)):
        block.register_forward_hook(lambda m, args, out, u=mine.reft.units: edit(u, out))
    batch = batch_for(model)
    expected = logits(reference, batch)
    torch.testing.assert_close(logits(model, batch), expected, atol=1e-5, rtol=1e-5)
    # a causal model's first position sees only itself: its logits move; a middle position's move through
    # attention to the edited prefix only, so they move too, but the unedited hidden states stay put at layer 0
    seen = {}
    blocks(model)[0][1].register_forward_hook(lambda m, args, out: seen.update(out=hidden_of(out)))
    blocks(reference)[0][1]._forward_hooks.clear()
    blocks(reference)[0][1].register_forward_hook(lambda m, args, out: seen.update(base=hidden_of(out)))
    logits(model, batch), logits(reference, batch)
    assert torch.equal(seen["out"][:, 2:-3], seen["base"][:, 2:-3])
    assert (seen["out"][:, :2] - seen["base"][:, :2]).abs().max() > 1e-3


@pytest.mark.parametrize("prefix,suffix,tied,units", [(2, 3, False, 2), (2, 3, True, 1), (3, 0, False, 1),
                                                      (0, 2, False, 1)])
def test_one_unit_per_position_group_in_use(prefix, suffix, tied, units):
    config = lr.LoReFTConfig(r=2, prefix_positions=prefix, suffix_positions=suffix, tied_weights=tied)
    model = lr.apply(fresh("tiny-bert"), config)
    d, L = 32, 2
    assert count_trainable(model) == L * units * (2 * d * 2 + 2)


def test_no_position_to_edit_is_refused():
    with pytest.raises(ValueError, match="prefix_positions"):
        lr.apply(fresh("tiny-bert"), lr.LoReFTConfig(prefix_positions=0, suffix_positions=0))
