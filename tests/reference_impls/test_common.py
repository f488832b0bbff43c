"""Promises every method makes, tested for every method x architecture in impl_cases.CASES.

Tolerances: "equal" means bitwise equal where the code path is the same (frozen weights, save/load);
outputs computed along different float paths (merged vs unmerged weights, x·1 vs x) are compared with
atol=rtol=1e-4 in float32. The tiny models' logits have magnitude ~5 and float32 keeps ~7 significant
digits, so re-associating the sums of two blocks moves them by ~1e-5 (measured: at most 6e-6 for the
merge test's adapters); a real change is far larger (those perturbed adapters move the logits by 0.5 to
3.5, and the test asserts more than 100 * atol).
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from impl_cases import CASES, batch_for, catalog_method, formula_count, fresh, logits, perturb, prepare, run_training
from reference_impls import IDS, METHODS, module
from reference_impls._core import count_trainable, load_trainable, merge, save_trainable, unmerge

ATOL, RTOL = 1e-4, 1e-4


def cases(promise: str | None = None) -> list:
    out = []
    for method_id, case in CASES.items():
        archs = case.learns_on if promise == "learns" and case.learns_on else case.archs
        if promise in (None, "learns") or getattr(case, promise):
            out += [pytest.param(method_id, a, id=f"{method_id}-{a}") for a in archs]
    return out


def test_every_registered_method_has_a_case_here():
    assert set(CASES) == set(IDS)


@pytest.mark.parametrize("method_id", list(CASES))
def test_catalog_points_at_this_implementation(method_id):
    assert catalog_method(method_id).implementations.reference == f"{module(method_id).__name__.replace('.', '/')}.py"


@pytest.mark.parametrize("method_id", list(CASES))
def test_config_defaults_match_catalog(method_id):
    config = METHODS[method_id][0]()
    fields = {f.name for f in dataclasses.fields(config)}
    for h in catalog_method(method_id).hyperparameters:
        assert h.name in fields, f"{method_id}: config lacks catalog hyperparameter '{h.name}'"
        value = getattr(config, h.name)
        expected = tuple(h.default) if isinstance(h.default, list) else h.default
        assert value == expected, f"{method_id}.{h.name}: config default {value!r}, catalog {expected!r}"


@pytest.mark.parametrize("method_id,arch", cases())
def test_trainable_count_matches_catalog_formula(method_id, arch):
    base, adapted, config = prepare(method_id, arch)
    if CASES[method_id].before_count:
        CASES[method_id].before_count(adapted)
    assert count_trainable(adapted) == formula_count(method_id, base, config)


@pytest.mark.parametrize("method_id,arch", cases())
def test_only_method_params_train_and_frozen_weights_stay_bitwise_equal(method_id, arch):
    case = CASES[method_id]
    model = fresh(arch)
    base_names = {id(p): name for name, p in model.named_parameters()}
    torch.manual_seed(0)
    config = case.config()
    model = METHODS[method_id][1](model, config)

    trained_base = {base_names[id(p)] for p in model.parameters() if p.requires_grad and id(p) in base_names}
    expected = {"none": set(), "all": set(base_names.values()),
                "bias": {n for n in base_names.values() if n.endswith(".bias")}}[case.trains_base]
    assert trained_base == expected

    frozen = {name: t.detach().clone() for name, t in [*model.named_parameters(), *model.named_buffers()]
              if not t.requires_grad}
    run_training(method_id, model, config, steps=3)
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, f"{name}: requires_grad={p.requires_grad}, grad={p.grad}"
    now = dict([*model.named_parameters(), *model.named_buffers()])
    changed = [name for name, before in frozen.items() if not torch.equal(now[name], before)]
    assert changed == []


@pytest.mark.parametrize("method_id,arch", cases("starts_equal"))
def test_starts_equal_to_base_model(method_id, arch):
    case = CASES[method_id]
    base, adapted, config = prepare(method_id, arch)
    reference = case.init_reference(base, config) if case.init_reference else base
    batch = batch_for(base)
    torch.testing.assert_close(logits(adapted, batch), logits(reference, batch), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("method_id,arch", cases("mergeable"))
def test_merge_then_forward_equals_unmerged_forward(method_id, arch):
    base, model, _ = prepare(method_id, arch)
    perturb(model, std=0.1)
    batch = batch_for(model)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    unmerged = logits(model, batch)
    assert (unmerged - logits(base, batch)).abs().max() > 100 * ATOL  # the perturbed update is not a no-op
    merged = logits(merge(model), batch)
    torch.testing.assert_close(merged, unmerged, atol=ATOL, rtol=RTOL)
    unmerge(model)
    for n, p in model.named_parameters():
        if n in weights:  # unmerging restores the frozen weights up to float rounding
            torch.testing.assert_close(p, weights[n], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(logits(model, batch), unmerged, atol=ATOL, rtol=RTOL)


@pytest.mark.slow
@pytest.mark.parametrize("method_id,arch", cases("learns"))
def test_loss_goes_down_on_synthetic_task(method_id, arch):
    _, model, config = prepare(method_id, arch)
    losses = run_training(method_id, model, config, steps=30, lr=CASES[method_id].lr)
    # 30 Adam steps on one fixed batch of a learnable pattern: at least a 10% drop
    assert losses[-1] < 0.9 * losses[0], f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"


@pytest.mark.parametrize("method_id,arch", cases())
def test_save_load_round_trip_reproduces_outputs(method_id, arch, tmp_path):
    _, model, config = prepare(method_id, arch, seed=0)
    perturb(model)
    batch = batch_for(model)
    save_trainable(model, tmp_path / "adapter.safetensors")

    _, restored, _ = prepare(method_id, arch, seed=123, config=config)  # different init, same structure
    load_trainable(restored, tmp_path / "adapter.safetensors")
    assert torch.equal(logits(restored, batch), logits(model, batch))
