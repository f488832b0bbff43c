"""Diff Pruning promises: hard-concrete gates and the expected-L0 penalty follow the paper's formulas, the
penalty closes gates, magnitude pruning keeps exactly the top-k |δ| with their values, the fixed-mask phase
changes only those entries, and the structured variant drops whole tensors."""
from __future__ import annotations

import math

import pytest
import torch

from impl_cases import batch_for, fresh, logits, perturb
from reference_impls import diff_pruning as dp
from reference_impls._core import count_trainable, n_params, train
from reference_impls._partial import effective_weights, selected_indices
from sparse_checks import moved_entries_after_merge

CONFIG = dp.DiffPruningConfig(density=0.05)


def test_gate_and_expected_l0_follow_the_hard_concrete_formulas():
    d = dp.DiffDelta(torch.Size([4, 3]), CONFIG)
    with torch.no_grad():
        d.log_alpha.copy_(torch.linspace(-4, 4, 12).view(4, 3))
        d.w.fill_(2.0)
    l, r = CONFIG.stretch_l, CONFIG.stretch_r
    expected = (torch.sigmoid(d.log_alpha) * (r - l) + l).clamp(0, 1) * 2.0
    torch.testing.assert_close(d.delta(stochastic=False), expected)
    assert (d.delta(stochastic=False) == 0).any() and (d.delta(stochastic=False) == 2.0).any()  # exact 0 and 1
    torch.testing.assert_close(d.expected_l0(), torch.sigmoid(d.log_alpha - math.log(-l / r)).sum())
    torch.manual_seed(0)
    samples = torch.stack([d.delta(stochastic=True) for _ in range(2000)]) / 2.0  # z samples
    # P(z > 0) estimated from samples matches the closed form used by the penalty (std ~0.011)
    torch.testing.assert_close((samples > 0).float().mean(0), torch.sigmoid(d.log_alpha - math.log(-l / r)),
                               atol=0.05, rtol=0)


@pytest.mark.slow
def test_l0_penalty_closes_gates():
    model = dp.apply(fresh("tiny-llama"), CONFIG)
    before = float(sum(d.expected_l0().detach() for d in dp.diff_deltas(model)))
    strong = dp.DiffPruningConfig(density=0.05, l0_reg=1e-3)  # large λ so that 10 steps show it
    train(model, batch_for(model), 10, 0.5, **dp.training_hooks(model, strong))  # Adam: ~0.5 per step on log α
    after = float(sum(d.expected_l0().detach() for d in dp.diff_deltas(model)))
    assert after < 0.9 * before
    free = dp.apply(fresh("tiny-llama"), CONFIG)  # the same run without the penalty keeps its gates open
    train(free, batch_for(free), 10, 0.5, **dp.training_hooks(free, dp.DiffPruningConfig(l0_reg=0.0)))
    assert float(sum(d.expected_l0().detach() for d in dp.diff_deltas(free))) > after


def test_prune_keeps_exactly_the_top_k_differences_with_their_values():
    base = fresh("tiny-bert")
    names = [n for n, _ in base.named_parameters()]
    model = dp.apply(fresh("tiny-bert"), CONFIG)
    perturb(model, std=0.1)
    model.eval()
    dense = {d.param_name: d.delta(stochastic=False).detach().clone() for d in dp.diff_deltas(model)}
    dp.prune(model, CONFIG)
    k = int(n_params(base) * CONFIG.density // 1)
    assert count_trainable(model) == k
    chosen = selected_indices(model)
    kept = torch.cat([dense[n].flatten()[i].abs() for n, i in chosen.items()])
    mask = {n: torch.zeros(v.numel(), dtype=torch.bool) for n, v in dense.items()}
    for n, i in chosen.items():
        mask[n][i] = True
    dropped = torch.cat([v.flatten()[~mask[n]].abs() for n, v in dense.items()])
    assert kept.min() >= dropped.max() and kept.numel() == k
    w = effective_weights(model, names)
    for name, w0 in base.named_parameters():
        expected = w0.flatten() + torch.where(mask[name], dense[name].flatten(), torch.zeros(()))
        torch.testing.assert_close(w[name].flatten(), expected, atol=1e-6, rtol=0)


def test_fixed_mask_phase_changes_only_kept_entries_and_merges_to_effective_weights():
    base = fresh("tiny-llama")
    model = dp.apply(fresh("tiny-llama"), CONFIG)
    train(model, batch_for(model), 5, 1e-2, **dp.training_hooks(model, CONFIG))
    dp.prune(model, CONFIG)
    train(model, batch_for(model), 5, 1e-2, **dp.training_hooks(model, CONFIG))
    moved = moved_entries_after_merge(base, model)
    assert sum(map(len, moved.values())) > 0


def test_structured_group_gate_drops_a_whole_tensor():
    model = dp.apply(fresh("tiny-llama"), dp.DiffPruningConfig(structured=True))
    perturb(model, std=0.1)
    target = next(d for d in dp.diff_deltas(model) if d.param_name.endswith("q_proj.weight"))
    with torch.no_grad():
        target.group_log_alpha.fill_(-10.0)  # z_g = clamp(σ(-10)·3 - 1.5) = 0
    assert torch.equal(target.delta(stochastic=False), torch.zeros(target.shape))
    other = next(d for d in dp.diff_deltas(model) if d is not target)
    assert other.delta(stochastic=False).abs().sum() > 0
    batch = batch_for(model)
    assert not torch.equal(logits(model, batch), logits(fresh("tiny-llama"), batch))


def test_training_adds_lambda_times_the_summed_expected_l0():
    """extra_loss = λ Σ_i σ(log α_i − log(−l/r)) over every entry of every delta (authors' sparsity_pen)."""
    config = dp.DiffPruningConfig(density=0.05, l0_reg=0.3)
    model = dp.apply(fresh("tiny-bert"), config)
    deltas = dp.diff_deltas(model)
    with torch.no_grad():
        for d in deltas:
            d.log_alpha.uniform_(-3, 3)
    shift = math.log(-config.stretch_l / config.stretch_r)
    expected = 0.3 * sum(torch.sigmoid(d.log_alpha - shift).sum() for d in deltas)
    torch.testing.assert_close(dp.training_hooks(model, config)["extra_loss"](), expected)
