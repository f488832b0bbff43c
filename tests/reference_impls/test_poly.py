"""Poly-specific promises: the task's routing weights mix the skills per split, the mixed update is
x A_t B_t / r with MHR's block layout, per-example task ids, merging one task; peft's PolyModel as the oracle
on tiny Llama, BERT and T5 (peft wraps nn.Linear only, so GPT-2's Conv1D has no comparison, and peft has no
merge, so merging is checked against our own unmerged forward)."""
from __future__ import annotations

import functools

import pytest
import torch

from impl_cases import batch_for, formula_count, fresh, logits, perturb
from peft_parity import assert_matches_peft
from reference_impls import poly
from reference_impls._core import count_trainable


def _layer(d_in=6, d_out=4, r=2, n_tasks=3, n_skills=3, n_splits=2):
    torch.manual_seed(0)
    routing = poly.TaskRouting(n_tasks)
    layer = poly.PolyLinear(torch.nn.Linear(d_in, d_out), routing, r, n_tasks, n_skills, n_splits).eval()
    with torch.no_grad():
        layer.B.normal_()
        layer.Z.normal_()
    return layer, routing


def test_update_mixes_each_split_of_the_skills_by_the_tasks_normalised_sigmoids():
    layer, routing = _layer()
    x = torch.randn(2, 5, 6)
    routing.task_ids = torch.tensor([2, 0])
    got = layer(x) - layer.base(x)
    for b, t in enumerate([2, 0]):
        expected = torch.zeros(5, 4)
        for q_in in range(2):      # input block q_in (3 features) ...
            gates = torch.sigmoid(layer.Z[t, 3 * q_in:3 * q_in + 3])
            A = sum(gates[s] / gates.sum() * layer.A[q_in, s] for s in range(3))  # (3, r)
            for q_out in range(2):  # ... reaches every output block q_out (2 features) through the rank-2 code
                gates_out = torch.sigmoid(layer.Z[t, 3 * q_out:3 * q_out + 3])
                B = sum(gates_out[s] / gates_out.sum() * layer.B[q_out, s] for s in range(3))  # (r, 2)
                expected[:, 2 * q_out:2 * q_out + 2] += x[b, :, 3 * q_in:3 * q_in + 3] @ A @ B / 2  # / r
        torch.testing.assert_close(got[b], expected, atol=1e-5, rtol=1e-5)


def test_training_samples_relaxed_bernoulli_gates_that_still_sum_to_one():
    layer, _ = _layer()
    layer.train()
    torch.manual_seed(1)
    w1, w2 = layer.mixing_weights(torch.tensor([1, 1])), layer.mixing_weights(torch.tensor([1, 1]))
    assert not torch.allclose(w1, w2)  # sampled
    torch.testing.assert_close(w1.sum(-1), torch.ones(2, 2))
    layer.eval()
    torch.testing.assert_close(layer.mixing_weights(torch.tensor([1])), layer.mixing_weights(torch.tensor([1])))


def test_task_ids_are_required_with_several_tasks_and_default_to_task_0_with_one():
    config = poly.PolyConfig(r=2, n_tasks=3, n_skills=2)
    model = poly.apply(fresh("tiny-llama"), config)
    batch = batch_for(model)
    with pytest.raises(ValueError, match="pass task_ids"):
        model(**batch)
    with pytest.raises(ValueError, match="task_ids must hold"):
        model(**batch, task_ids=torch.tensor([0, 1, 3, 0]))
    single = poly.apply(fresh("tiny-llama"), poly.PolyConfig(r=2, n_tasks=1, n_skills=2))
    perturb(single)
    torch.testing.assert_close(logits(single, batch), single(**batch, task_ids=torch.zeros(4)).logits)


def test_each_example_follows_its_own_task_and_merging_serves_one_task():
    model = poly.apply(fresh("tiny-gpt2"), poly.PolyConfig(r=2, n_tasks=2, n_skills=3, n_splits=2))
    perturb(model, std=0.3)
    batch = batch_for(model)
    mixed = model(**batch, task_ids=torch.tensor([0, 1, 1, 0])).logits
    for t in (0, 1):
        alone = model(**batch, task_ids=torch.full((4,), t)).logits
        rows = [i for i, task in enumerate([0, 1, 1, 0]) if task == t]
        torch.testing.assert_close(mixed[rows], alone[rows], atol=1e-5, rtol=1e-5)
    task1 = model(**batch, task_ids=torch.ones(4)).logits
    for m in model.modules():
        if isinstance(m, poly.PolyLinear):
            m.merge(task_id=1)
    torch.testing.assert_close(model(**batch, task_ids=torch.ones(4)).logits, task1, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="merged for task 1"):
        model(**batch, task_ids=torch.zeros(4))


def test_count_matches_the_formula_with_splits_and_tasks():
    config = poly.PolyConfig(r=2, n_tasks=3, n_skills=3, n_splits=2)
    model = poly.apply(fresh("tiny-bert"), config)
    assert count_trainable(model) == formula_count("poly", fresh("tiny-bert"), config)
    assert count_trainable(model) == 4 * (3 * 2 * (32 + 32) + 3 * 2 * 3)  # q and v of 2 layers, all 32 wide


def _link(mine, layer):
    return [(mine.A, layer.poly_lora_A["default"]), (mine.B, layer.poly_lora_B["default"]),
            (mine.Z, layer.poly_router["default"].module_logits)]


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-bert", "tiny-t5"])
def test_matches_peft_poly(arch):
    peft = pytest.importorskip("peft")
    config = poly.PolyConfig(r=4, n_tasks=3, n_skills=3, n_splits=2, target_modules=("q", "v"))
    ours = poly.apply(fresh(arch), config)
    names = [n for n, m in ours.named_modules() if isinstance(m, poly.PolyLinear)]
    perturb(ours)  # B off zero
    theirs = peft.get_peft_model(fresh(arch), peft.PolyConfig(r=4, n_tasks=3, n_skills=3, n_splits=2,
                                                              target_modules=names))
    task_ids = torch.tensor([2, 0, 1, 2])  # both sides get the tasks in every forward of the comparison
    ours.register_forward_pre_hook(lambda m, args, kw: (args, {**kw, "task_ids": task_ids}), with_kwargs=True,
                                   prepend=True)  # runs before the hook that hands them to the layers
    theirs.forward = functools.partial(theirs.base_model.forward, task_ids=task_ids)
    assert count_trainable(ours) == formula_count("poly", fresh(arch), config)
    assert_matches_peft(ours, theirs, names, _link, mergeable=False)
