"""U/S-BitFit promises: the search scores are the first-order estimate δ ⊙ ∂L/∂δ after training BitFit,
U-BitFit keeps exactly the top-k entries, S-BitFit whole bias vectors in score order within the budget,
and only the kept biases change."""
from __future__ import annotations

import torch

from impl_cases import batch_for, fresh, run_training
from reference_impls import u_s_bitfit as us
from reference_impls._core import count_trainable, n_bias, train
from reference_impls._partial import selected_indices
from sparse_checks import moved_entries_after_merge

U = us.USBitFitConfig(mode="unstructured", keep_ratio=0.5, search_steps=5, search_lr=1e-2)
S = us.USBitFitConfig(mode="structured", keep_ratio=0.5, search_steps=5, search_lr=1e-2)


def test_search_scores_are_delta_times_gradient_after_bitfit_training():
    batch = batch_for(fresh("tiny-bert"), seed=2)
    scores = us.search_scores(fresh("tiny-bert"), U, [batch])
    bitfit = fresh("tiny-bert")  # BitFit written out: train the bias tensors themselves
    b0 = {n: p.detach().clone() for n, p in bitfit.named_parameters()}
    for n, p in bitfit.named_parameters():
        p.requires_grad_(us.is_bias(n))
    train(bitfit, batch, U.search_steps, U.search_lr)
    bitfit.zero_grad()
    bitfit(**batch).loss.backward()
    assert set(scores) == {n for n in b0 if us.is_bias(n)}
    for n, p in bitfit.named_parameters():
        if us.is_bias(n):
            torch.testing.assert_close(scores[n], (p.detach() - b0[n]) * p.grad, atol=1e-6, rtol=1e-3)


def test_unstructured_keeps_exactly_the_top_k_entries_by_score():
    batch = batch_for(fresh("tiny-bert"), seed=2)
    scores = us.search_scores(fresh("tiny-bert"), U, [batch])
    model = us.apply(fresh("tiny-bert"), U, data=[batch])
    chosen = selected_indices(model)
    k = int(n_bias(fresh("tiny-bert")) * U.keep_ratio // 1)
    assert count_trainable(model) == k
    mask = {n: torch.zeros(s.numel(), dtype=torch.bool) for n, s in scores.items()}
    for n, i in chosen.items():
        mask[n][i] = True
    kept = torch.cat([s.abs().flatten()[mask[n]] for n, s in scores.items()])
    dropped = torch.cat([s.abs().flatten()[~mask[n]] for n, s in scores.items()])
    assert kept.min() >= dropped.max()


def test_structured_keeps_whole_vectors_in_score_order_within_the_budget():
    batch = batch_for(fresh("tiny-gpt2"), seed=2)
    scores = us.search_scores(fresh("tiny-gpt2"), S, [batch])
    model = us.apply(fresh("tiny-gpt2"), S, data=[batch])
    chosen = selected_indices(model)
    k = int(n_bias(fresh("tiny-gpt2")) * S.keep_ratio // 1)
    assert all(chosen[n].numel() == scores[n].numel() for n in chosen)  # whole vectors only
    assert 0 < count_trainable(model) <= k
    vector_score = {n: s.sum().abs().item() for n, s in scores.items()}
    for n in set(scores) - set(chosen):  # a dropped vector did not fit beside the better ones kept
        better = sum(scores[m].numel() for m in chosen if vector_score[m] >= vector_score[n])
        assert better + scores[n].numel() > k, f"{n} would have fitted"


def test_only_kept_biases_change_and_bias_free_models_train_nothing():
    base, model = fresh("tiny-bert"), us.apply(fresh("tiny-bert"), U)
    run_training("u-s-bitfit", model, U, steps=5)
    moved = moved_entries_after_merge(base, model)
    assert all(us.is_bias(name) for name, changed in moved.items() if changed)
    assert sum(map(len, moved.values())) > 0
    assert count_trainable(us.apply(fresh("tiny-llama"), S)) == 0


def test_s_bitfit_keeps_a_vector_that_exactly_fills_the_budget():
    """Whole vectors are kept while used + n <= k: a 4-entry vector fits a budget of exactly 4."""
    scores = {"a.bias": torch.tensor([3.0, 3.0, 3.0, 3.0]), "b.bias": torch.tensor([1.0, 1.0, 1.0, 1.0])}
    kept = us.select(scores, us.USBitFitConfig(mode="structured", keep_ratio=0.5))  # k = 8 * 0.5 = 4
    assert set(kept) == {"a.bias"} and kept["a.bias"].tolist() == [0, 1, 2, 3]
