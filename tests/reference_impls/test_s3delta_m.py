"""S3Delta-M-specific promises: the shifted global sigmoid holds the expected size at the budget, the
bi-level search moves the structure parameters, and the selected structure fits the budget and is the
supernet with its chosen gates open and the others shut."""
from __future__ import annotations

import copy

import pytest
import torch

from impl_cases import batch_for, fresh, logits, perturb
from reference_impls import s3delta_m as s3
from reference_impls._core import count_trainable, n_params

CONFIG = s3.S3DeltaMConfig(budget=0.05, r=2, bottleneck=4)


def test_shifted_global_sigmoid_keeps_the_expected_size_at_the_budget():
    model = s3.apply(fresh("tiny-llama"), CONFIG)
    gates = model.structure_gates
    assert gates.budget_params == int(0.05 * n_params(fresh("tiny-llama")))
    assert gates.budget_params < sum(c.cost for c in model.candidates)  # the budget binds
    for seed in range(3):
        with torch.no_grad():
            gates.alpha.normal_(generator=torch.Generator().manual_seed(seed))
        assert gates.expected_size() == pytest.approx(gates.budget_params, rel=1e-6)
    kinds = [c.kind for c in model.candidates]
    assert kinds.count("lora") == 4 and kinds.count("adapter") == 2 and kinds.count("bias") == 10


def test_search_moves_the_structure_and_the_selection_is_greedy_by_alpha_within_the_budget():
    base = fresh("tiny-bert")
    model = s3.apply(copy.deepcopy(base), CONFIG)
    dev = s3.search(model, batch_for(base, seed=0), batch_for(base, seed=1), steps=12)
    alpha = model.structure_gates.alpha.detach()
    assert alpha.abs().max() > 0 and dev[-1] < dev[0]
    chosen = s3.select(model)
    costs = [c.cost for c in model.candidates]
    budget = model.structure_gates.budget_params
    assert 0 < sum(costs[i] for i in chosen) <= budget
    for i in set(range(len(costs))) - set(chosen):  # skipped only because it no longer fit
        before = sum(costs[j] for j in chosen if alpha[j] >= alpha[i])
        assert before + costs[i] > budget
    final = s3.finalize(model)
    assert count_trainable(final) == sum(costs[i] for i in chosen) <= int(0.05 * n_params(base))


def test_finalized_structure_equals_the_supernet_with_chosen_gates_open_and_others_shut():
    model = s3.apply(fresh("tiny-llama"), CONFIG)
    perturb(model, std=0.2)
    chosen = [0, 5, 7, 14]  # block 0: Δb on W_q, LoRA on W_q, the adapter; block 1: LoRA on W_v
    with torch.no_grad():
        model.structure_gates.alpha.fill_(-1e4)
        model.structure_gates.alpha[chosen] = 1e4
    batch = batch_for(model)
    gated = logits(model, batch)
    final = s3.finalize(copy.deepcopy(model), chosen)
    torch.testing.assert_close(logits(final, batch), gated, atol=1e-5, rtol=1e-5)
    assert (gated - logits(fresh("tiny-llama"), batch)).abs().max() > 1e-2
    assert not hasattr(final, "structure_gates") and final.chosen == chosen


def test_forward_gates_are_the_shifted_sigmoid_recomputed_from_alpha_and_costs():
    """z_c = σ(α_c + s) with Σ_c z_c |θ_c| = B: recomputed from the candidates' own parameter counts,
    and the gate a LoRA candidate applies is that z_c."""
    model = s3.apply(fresh("tiny-llama"), CONFIG)
    gates = model.structure_gates
    with torch.no_grad():
        gates.alpha.normal_(generator=torch.Generator().manual_seed(7))
    model(**batch_for(model))
    z = gates.z.detach().double()
    costs = torch.tensor([c.cost for c in model.candidates], dtype=torch.float64)
    assert (z * costs).sum().item() == pytest.approx(gates.budget_params, rel=1e-6)
    s = torch.logit(z) - gates.alpha.detach().double()  # one shift shared by every candidate
    torch.testing.assert_close(s, torch.full_like(s, s[0].item()), atol=1e-4, rtol=0)  # z is float32
    i = next(i for i, c in enumerate(model.candidates) if c.kind == "lora")
    assert model.get_submodule(model.candidates[i].name).gate[0]().item() == pytest.approx(z[i].item())
