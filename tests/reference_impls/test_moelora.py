"""MOELoRA-specific promises: the gate depends on the task only, each task gets its own mixture of shared
experts (and after multi-task training the tasks behave differently), merge folds one task's mixture."""
from __future__ import annotations

import pytest
import torch

from impl_cases import batch_for, fresh, logits, perturb, prepare
from reference_impls import moelora
from reference_impls._core import count_trainable, merge, unmerge

ATOL, RTOL = 1e-4, 1e-4


def _layers(model):
    return [m for m in model.modules() if isinstance(m, moelora.MOELoRALinear)]


def test_experts_split_the_rank_and_each_layer_has_its_own_gate():
    config = moelora.MOELoRAConfig(r=8, n_experts=4, n_tasks=5, task_dim=6, target_modules=("q",))
    layer = moelora.MOELoRALinear(torch.nn.Linear(32, 24), config)
    assert layer.A.shape == (4, 2, 32) and layer.B.shape == (4, 24, 2)
    assert layer.E.weight.shape == (5, 6) and layer.W_T.weight.shape == (4, 6)
    assert sum(p.numel() for p in layer.parameters() if p.requires_grad) - 32 * 24 - 24 == 8 * (32 + 24) + 6 * (5 + 4)
    with pytest.raises(ValueError, match="multiple"):
        moelora.MOELoRALinear(torch.nn.Linear(32, 24), moelora.MOELoRAConfig(r=6, n_experts=4))


def test_gate_depends_only_on_the_task():
    _, model, _ = prepare("moelora", "tiny-llama")
    perturb(model)
    batch = batch_for(model)
    tasks = torch.tensor([0, 2, 1, 2])
    moelora.set_task(model, tasks)
    mixed = logits(model, batch)
    for t in range(3):
        moelora.set_task(model, t)
        alone = logits(model, batch)
        torch.testing.assert_close(mixed[tasks == t], alone[tasks == t], atol=ATOL, rtol=RTOL)
    w = _layers(model)[0].gate(tasks)
    assert w.shape == (4, 2)
    torch.testing.assert_close(w.sum(-1), torch.ones(4))


def test_multitask_training_gives_tasks_their_own_mixture_and_merges_per_task():
    arch = "tiny-bert"
    _, model, _ = prepare("moelora", arch)
    data = [batch_for(model, seed=0), batch_for(model, seed=1)]  # two synthetic tasks
    gate0 = [m.gate(torch.arange(2)).detach().clone() for m in _layers(model)]
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    first = []
    for step in range(16):
        t = step % 2  # alternate tasks; the gate sees only the task id
        moelora.set_task(model, t)
        loss = model(**data[t]).loss
        first.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    for t in (0, 1):
        moelora.set_task(model, t)
        assert model(**data[t]).loss.item() < 0.95 * first[t]  # both tasks learn
    moved = [(m.gate(torch.arange(2)) - g0).abs().max() for m, g0 in zip(_layers(model), gate0)]
    assert max(moved) > 1e-3  # the gates were trained
    probe = batch_for(fresh(arch), seed=2)
    moelora.set_task(model, 0)
    out0 = logits(model, probe)
    moelora.set_task(model, 1)
    out1 = logits(model, probe)
    assert (out0 - out1).abs().max() > 100 * ATOL  # the two tasks use different mixtures
    merged1 = logits(merge(model), probe)  # fold task 1's mixture
    torch.testing.assert_close(merged1, out1, atol=ATOL, rtol=RTOL)
    with pytest.raises(RuntimeError, match="unmerge"):
        moelora.set_task(model, 0)
    unmerge(model)
    moelora.set_task(model, 0)
    torch.testing.assert_close(logits(merge(model), probe), out0, atol=ATOL, rtol=RTOL)


def test_merge_refuses_per_example_tasks():
    _, model, _ = prepare("moelora", "tiny-bert")
    moelora.set_task(model, torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="one task"):
        merge(model)


def test_count_matches_one_rank_r_lora_plus_gates():
    base, model, config = prepare("moelora", "tiny-bert")
    n_targets = len(_layers(model))
    lora_part = sum(m.A.numel() + m.B.numel() for m in _layers(model))
    assert lora_part == n_targets * config.r * (32 + 32)  # q and v of tiny-bert are 32 x 32
    assert count_trainable(model) == lora_part + n_targets * config.task_dim * (config.n_tasks + config.n_experts)


def test_forward_is_the_task_gated_sum_of_experts_and_A_starts_at_the_authors_scale():
    """h = W0 x + b + (alpha / r) Σ_i softmax(W_T E[t])_i B_i A_i x, per example's task t."""
    config = moelora.MOELoRAConfig(r=4, n_experts=2, n_tasks=3, task_dim=5, alpha=6)
    torch.manual_seed(0)
    layer = moelora.MOELoRALinear(torch.nn.Linear(40, 30), config)
    assert abs(layer.A.std().item() - 0.01) < 0.002  # A ~ N(0, 0.01²), the authors' reset_lora_parameters
    with torch.no_grad():
        layer.B.normal_()
    tasks = torch.tensor([2, 0])
    moelora.set_task(torch.nn.ModuleList([layer]), tasks)
    x = torch.randn(2, 3, 40)
    expected = layer.base(x)
    for b, t in enumerate(tasks.tolist()):
        logits_t = layer.E.weight[t] @ layer.W_T.weight.T  # (N,)
        w = torch.exp(logits_t) / torch.exp(logits_t).sum()
        for i in range(2):
            expected[b] = expected[b] + (6 / 4) * w[i] * (x[b] @ layer.A[i].T @ layer.B[i].T)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
