"""MTL-LoRA-specific promises: each example's update is (alpha / r) Σ_i softmax(w_t / τ)_i B^i Λ_t A x with
its own task t, tasks are set per example, and one task's update merges into W. peft 0.21 has no MTL-LoRA,
so there is no oracle test."""
from __future__ import annotations

import pytest
import torch

from impl_cases import batch_for, fresh, logits, perturb
from reference_impls import mtl_lora


def _layer(n_tasks=3, n=2, r=2, alpha=4, tau=0.5):
    torch.manual_seed(0)
    config = mtl_lora.MTLLoRAConfig(r=r, alpha=alpha, n_up_projection=n, n_tasks=n_tasks, weights_sharpness=tau)
    layer = mtl_lora.MTLLoRALinear(torch.nn.Linear(8, 6), config, mtl_lora.TaskIds(n_tasks))
    with torch.no_grad():
        for p in (layer.B, layer.lam, layer.w):
            p.normal_()
    return layer


def test_each_example_gets_its_own_tasks_transform_and_mixture():
    layer = _layer()
    x = torch.randn(4, 5, 8)
    tasks = torch.tensor([2, 0, 1, 2])
    layer.tasks.ids = tasks
    out = layer(x)
    for b, t in enumerate(tasks.tolist()):
        p = torch.exp(layer.w[t] / 0.5) / torch.exp(layer.w[t] / 0.5).sum()
        update = sum(p[i] * layer.B[i] @ torch.diag(layer.lam[t]) @ layer.A for i in range(2))
        expected = layer.base(x[b]) + (4 / 2) * x[b] @ update.T
        torch.testing.assert_close(out[b], expected, atol=1e-5, rtol=1e-5)


def test_tasks_differ_only_through_lambda_and_mixing_weights():
    layer = _layer()
    x = torch.randn(1, 3, 8).expand(2, 3, 8)
    layer.tasks.ids = torch.tensor([0, 1])
    out = layer(x)
    assert (out[0] - out[1]).abs().max() > 1e-3
    with torch.no_grad():
        layer.lam[1] = layer.lam[0]
        layer.w[1] = layer.w[0]
    out = layer(x)
    torch.testing.assert_close(out[0], out[1])


def test_without_task_ids_examples_take_tasks_round_robin():
    layer = _layer(n_tasks=3)
    x = torch.randn(5, 2, 8)
    default = layer(x)
    layer.tasks.ids = torch.tensor([0, 1, 2, 0, 1])
    torch.testing.assert_close(layer(x), default)


def test_set_tasks_checks_the_ids():
    model = mtl_lora.apply(fresh("tiny-llama"), mtl_lora.MTLLoRAConfig(r=4, n_tasks=2))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        mtl_lora.set_tasks(model, torch.tensor([0, 2]))
    mtl_lora.set_tasks(model, torch.tensor([1, 1, 0]))
    with pytest.raises(ValueError, match="batch of 4"):
        model(**batch_for(model))


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-gpt2"])
def test_merging_one_task_gives_that_tasks_outputs(arch):
    model = mtl_lora.apply(fresh(arch), mtl_lora.MTLLoRAConfig(r=4, alpha=8, n_tasks=2))
    perturb(model)
    batch = batch_for(model)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    mtl_lora.set_tasks(model, torch.ones(4, dtype=torch.long))  # every example is task 1
    task1 = logits(model, batch)
    mtl_lora.set_tasks(model, torch.zeros(4, dtype=torch.long))
    assert (logits(model, batch) - task1).abs().max() > 1e-2
    mtl_lora.merge_task(model, 1)
    torch.testing.assert_close(logits(model, batch), task1, atol=1e-4, rtol=1e-4)
    mtl_lora.unmerge_task(model)
    for n, p in model.named_parameters():
        if n in weights:
            torch.testing.assert_close(p, weights[n], atol=1e-6, rtol=1e-5)
