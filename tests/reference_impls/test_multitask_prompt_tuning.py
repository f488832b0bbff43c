"""Multitask-prompt-tuning-specific promises: the low-rank task prompt, the three-stage procedure, peft as oracle."""
from __future__ import annotations

import pytest
import torch

from impl_cases import batch_for, fresh, logits, perturb
from reference_impls import multitask_prompt_tuning as mpt, prompt_tuning
from reference_impls._core import count_trainable, synthetic_batch, train

ATOL, RTOL = 1e-4, 1e-4  # float32 logits of magnitude ~5 along different summation orders (see test_common)


def test_each_input_gets_the_shared_prompt_times_its_own_tasks_low_rank_matrix():
    config = mpt.MultitaskPromptTuningConfig(n_virtual_tokens=5, num_ranks=2, num_tasks=3)
    model = mpt.apply(fresh("tiny-llama"), config)
    task_ids = torch.tensor([2, 0, 2, 1])
    prompts = model.task_prompt(task_ids)  # (4, 5, 32)
    for b, k in enumerate(task_ids.tolist()):
        W = model.task_cols[k] @ model.task_rows[k]  # (5, 2) @ (2, 32)
        assert torch.linalg.matrix_rank(W) <= 2
        torch.testing.assert_close(prompts[b], model.shared_prompt * W)


def test_a_task_batch_trains_the_shared_prompt_and_only_that_tasks_factors():
    model = mpt.apply(fresh("tiny-bert"), mpt.MultitaskPromptTuningConfig(n_virtual_tokens=4, num_tasks=3))
    batch = batch_for(model)
    model(**batch, task_ids=torch.full((4,), 1)).loss.backward()
    assert model.shared_prompt.grad.abs().sum() > 0
    for grad in (model.task_cols.grad, model.task_rows.grad):
        assert grad[1].abs().sum() > 0
        assert grad[0].abs().sum() == 0 and grad[2].abs().sum() == 0


def test_ones_task_init_starts_every_task_at_the_shared_prompt():
    model = mpt.apply(fresh("tiny-llama"), mpt.MultitaskPromptTuningConfig(n_virtual_tokens=4, num_ranks=3, num_tasks=2,
                                                                           task_init="ones"))
    torch.testing.assert_close(model.task_prompt(torch.tensor([0, 1])), model.shared_prompt.expand(2, -1, -1))


@pytest.mark.slow
def test_distillation_then_transfer_procedure():
    make = lambda: fresh("tiny-llama")  # noqa: E731
    sources = [synthetic_batch(make(), seed=s) for s in (11, 12)]
    teachers = mpt.train_teachers(make, sources, n_virtual_tokens=4, steps=15)
    student = mpt.apply(make(), mpt.MultitaskPromptTuningConfig(n_virtual_tokens=4, num_ranks=1, num_tasks=2,
                                                                task_init="ones"))
    # stage 2: the multitask student gets closer to the teachers (task loss + KL + hidden-state distance)
    losses = mpt.distill(student, teachers, sources, steps=15)
    assert losses[-1] < 0.8 * losses[0]
    # stage 3: the target starts from P* and the average source factors, then trains on a new task
    target = mpt.apply(make(), mpt.MultitaskPromptTuningConfig(n_virtual_tokens=4, num_ranks=1, num_tasks=1))
    mpt.transfer(target, student)
    torch.testing.assert_close(target.shared_prompt, student.shared_prompt)
    torch.testing.assert_close(target.task_cols[0], student.task_cols.mean(0))
    torch.testing.assert_close(target.task_rows[0], student.task_rows.mean(0))
    assert not torch.allclose(student.task_cols[0], student.task_cols[1])  # the source tasks did diverge
    target_batch = synthetic_batch(target, seed=13)
    target_losses = train(target, target_batch, steps=15, lr=0.3)
    assert target_losses[-1] < 0.9 * target_losses[0]


@pytest.mark.peft_oracle
def test_matches_peft_count_and_outputs_per_task():
    peft = pytest.importorskip("peft")
    config = mpt.MultitaskPromptTuningConfig(n_virtual_tokens=4, num_ranks=2, num_tasks=3)
    ours = mpt.apply(fresh("tiny-llama"), config)
    perturb(ours)
    theirs = peft.get_peft_model(fresh("tiny-llama"), peft.MultitaskPromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=4, num_ranks=2, num_tasks=3, prompt_tuning_init="RANDOM"))
    assert theirs.get_nb_trainable_parameters()[0] == count_trainable(ours)
    encoder = theirs.prompt_encoder["default"]
    with torch.no_grad():
        encoder.embedding.weight.copy_(ours.shared_prompt)
        encoder.prefix_task_cols.copy_(ours.task_cols)
        encoder.prefix_task_rows.copy_(ours.task_rows)
    batch = batch_for(ours)
    task_ids = torch.tensor([0, 2, 1, 2])
    with torch.no_grad():
        mine = ours(**batch, task_ids=task_ids)
        peft_out = theirs.eval()(**batch, task_ids=task_ids)
    torch.testing.assert_close(mine.logits, peft_out.logits, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(mine.loss, peft_out.loss, atol=ATOL, rtol=RTOL)


def test_distillation_loss_is_task_loss_plus_lambda_times_kl_and_hidden_mse():
    """L = L_PLM + λ (KL(teacher ‖ student) summed over the vocabulary, averaged over the batch
    + mean squared distance of the last hidden states), both over the real (non-prompt) positions."""
    make = lambda: fresh("tiny-llama")  # noqa: E731
    batch = synthetic_batch(make(), seed=5)
    teacher = prompt_tuning.apply(make(), prompt_tuning.PromptTuningConfig(n_virtual_tokens=3)).eval()
    student = mpt.apply(make(), mpt.MultitaskPromptTuningConfig(n_virtual_tokens=4, num_ranks=1, num_tasks=2))
    student.eval()
    B, T = batch["input_ids"].shape
    got = mpt.distillation_loss(student, teacher, batch, task=1, lam=0.7)
    with torch.no_grad():
        out = student(**batch, task_ids=torch.ones(B, dtype=torch.long), output_hidden_states=True)
        ref = teacher(**batch, output_hidden_states=True)
    p_t = ref.logits[:, -T:].softmax(-1)
    log_p_s = out.logits[:, -T:].log_softmax(-1)
    kl = (p_t * (p_t.log() - log_p_s)).sum() / B
    mse = ((out.hidden_states[-1][:, -T:] - ref.hidden_states[-1][:, -T:]) ** 2).mean()
    torch.testing.assert_close(got, out.loss + 0.7 * (kl + mse), atol=1e-5, rtol=1e-5)
