"""Child-Tuning-specific promises: the F mask is Bernoulli(p) and fresh each step, the D mask is fixed."""
from __future__ import annotations

import pytest
import torch

from impl_cases import batch_for, fresh, run_training
from reference_impls import child_tuning as ct


def _grads(model) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(**batch_for(model)).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_mode_f_keeps_a_reserve_p_share_of_gradients_scaled_by_one_over_p():
    raw = _grads(ct.apply(fresh("tiny-llama"), ct.ChildTuningConfig(reserve_p=1.0)))  # p = 1: no masking
    torch.manual_seed(0)
    masked = _grads(ct.apply(fresh("tiny-llama"), ct.ChildTuningConfig(reserve_p=0.3)))
    kept = total = 0
    for name, g in masked.items():
        nonzero = raw[name] != 0
        is_kept = g[nonzero] != 0
        torch.testing.assert_close(g[nonzero][is_kept], raw[name][nonzero][is_kept] / 0.3, atol=0, rtol=1e-6)
        kept, total = kept + int(is_kept.sum()), total + int(nonzero.sum())
    # ~24k Bernoulli(0.3) draws: the share has standard deviation 0.003; allow 0.02
    assert abs(kept / total - 0.3) < 0.02


def test_mode_f_draws_a_new_mask_every_step():
    model = ct.apply(fresh("tiny-llama"), ct.ChildTuningConfig(reserve_p=0.3))
    first, second = _grads(model), _grads(model)
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(first[name] != 0, second[name] != 0)


def test_mode_d_updates_only_the_highest_fisher_share_and_nothing_else():
    model = fresh("tiny-llama")
    data = [batch_for(model, seed=s) for s in range(3)]
    masks = ct.fisher_masks(ct.apply(fresh("tiny-llama"), ct.ChildTuningConfig(reserve_p=1.0)), data, 0.3)
    share = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert share == pytest.approx(0.3, abs=1e-3)

    model = ct.apply(model, ct.ChildTuningConfig(mode="D", reserve_p=0.3), data=data)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    run_training("child-tuning", model, ct.ChildTuningConfig(mode="D"), steps=3)
    changed = kept = 0
    for name, p in model.named_parameters():
        moved = p.detach() != before[name]
        assert not moved[~masks[name]].any(), f"{name}: an entry outside the Fisher mask changed"
        changed, kept = changed + int(moved.sum()), kept + int(masks[name].sum())
    assert changed > 0.9 * kept  # (almost) every masked-in entry trained


def test_mode_d_without_data_is_an_error():
    with pytest.raises(ValueError, match="data"):
        ct.apply(fresh("tiny-llama"), ct.ChildTuningConfig(mode="D"))


def test_mode_d_keeps_at_least_one_entry_when_the_share_rounds_to_zero():
    """The Fisher mask keeps max(1, round(p * n)) entries: exactly one for a vanishing reserve_p."""
    model = fresh("tiny-bert")
    masks = ct.fisher_masks(model, [batch_for(model)], 1e-12)
    assert sum(int(m.sum()) for m in masks.values()) == 1


def test_mode_d_mask_is_the_global_top_share_of_the_mean_squared_gradient():
    """F(w) = (1/N) Σ_batches (∂L/∂w)²; mask = F >= the value of the round(p n)-th largest F over all weights."""
    model = ct.apply(fresh("tiny-llama"), ct.ChildTuningConfig(reserve_p=1.0))
    data = [batch_for(model, seed=s) for s in range(2)]
    fisher = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for batch in data:
        for n, g in _grads_of(model, batch).items():
            fisher[n] += g ** 2 / len(data)
    flat = torch.cat([f.flatten() for f in fisher.values()])
    k = round(0.2 * flat.numel())
    threshold = flat.sort(descending=True).values[k - 1]
    masks = ct.fisher_masks(model, data, 0.2)
    for n, f in fisher.items():
        torch.testing.assert_close(masks[n], f >= threshold)


def _grads_of(model, batch) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
