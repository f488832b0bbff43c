"""Full fine-tuning: every parameter trains, and one SGD step is θ − η ∇θ L for all of them."""
from __future__ import annotations

import torch

from impl_cases import batch_for, fresh
from reference_impls import full_fine_tuning as fft
from reference_impls._core import count_trainable, freeze_base


def test_every_parameter_trains_even_after_a_freeze_and_one_sgd_step_moves_all_of_them():
    model = fresh("tiny-bert")
    freeze_base(model)  # apply must undo any earlier freezing
    model = fft.apply(model, fft.FullFineTuningConfig())
    assert count_trainable(model) == sum(p.numel() for p in model.parameters())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    model(**batch_for(model)).loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    for n, p in model.named_parameters():
        if n in grads:
            torch.testing.assert_close(p.detach(), before[n] - 0.1 * grads[n])
    assert len(grads) > 0.9 * len(before)  # (almost) every tensor gets a gradient
