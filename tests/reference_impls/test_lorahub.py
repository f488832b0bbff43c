"""LoraHub-specific promises: the procedure composes trained upstream LoRA modules with weights found
without gradients, within the bounds and budget; the composition averages the factors."""
from __future__ import annotations

import pytest
import torch

from impl_cases import batch_for, fresh, logits, prepare
from reference_impls import lora, lorahub
from reference_impls._core import find_targets, save_trainable, train


def _layers(model):
    return [m for m in model.modules() if isinstance(m, lorahub.LoraHubLinear)]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """Three LoRA modules trained on three synthetic tasks (different progressions) of tiny-llama."""
    paths = []
    for task in (1, 2, 3):
        torch.manual_seed(task)
        model = lora.apply(fresh("tiny-llama"), lora.LoRAConfig(r=4, alpha=8))
        train(model, batch_for(model, seed=task), steps=15, lr=2e-2)
        paths.append(str(tmp_path_factory.mktemp("up") / f"task{task}.safetensors"))
        save_trainable(model, paths[-1])
    return tuple(paths)


def test_procedure_finds_weights_that_reuse_the_upstream_modules(upstream):
    config = lorahub.LoraHubConfig(n_modules=3, r=4, alpha=8, target_modules=("q", "v"), upstream=upstream,
                                   max_steps=25)
    base = fresh("tiny-llama")
    few_shot = batch_for(base, seed=2)  # a few examples of a task one upstream module was trained on
    model = lorahub.apply(fresh("tiny-llama"), config)
    torch.testing.assert_close(logits(model, few_shot), logits(base, few_shot))  # w = 0: the base model
    base_loss = base(**few_shot).loss.item()
    history = lorahub.lorahub_search(model, few_shot, config)
    assert all(b <= a for a, b in zip(history, history[1:]))  # the best objective never gets worse
    w = lorahub.weights(model)
    assert w.abs().max() <= config.bound
    loss = model(**few_shot).loss.item()
    assert loss < 0.8 * base_loss, (base_loss, loss)  # composing the modules helps on the new task
    # the objective's penalty is the authors' 0.05 * mean |w_i| (lorahub/algorithm.py), not a sum
    assert history[-1] == pytest.approx(loss + config.l1_weight * sum(abs(x) for x in w.tolist()) / len(w), rel=1e-5)


def test_composition_averages_factors_not_products(upstream):
    config = lorahub.LoraHubConfig(n_modules=3, r=4, alpha=8, upstream=upstream)
    model = lorahub.apply(fresh("tiny-llama"), config)
    with torch.no_grad():
        lorahub.weights(model).copy_(torch.tensor([0.5, -1.0, 0.25]))
    from safetensors.torch import load_file
    states = [load_file(p) for p in upstream]
    t = find_targets(fresh("tiny-llama"), ["q"])[0]
    w = [0.5, -1.0, 0.25]
    A = sum(wi * s[f"{t.name}.A"] for wi, s in zip(w, states))
    B = sum(wi * s[f"{t.name}.B"] for wi, s in zip(w, states))
    layer = model.get_submodule(t.name)
    torch.testing.assert_close(layer.delta_weight(), 2.0 * B @ A)  # alpha / r = 2
    products = 2.0 * sum(wi * s[f"{t.name}.B"] @ s[f"{t.name}.A"] for wi, s in zip(w, states))
    assert (layer.delta_weight() - products).abs().max() > 1e-3  # not the weighted sum of the modules' updates


def test_one_weight_per_module_shared_by_all_layers_and_no_gradient():
    _, model, config = prepare("lorahub", "tiny-bert")
    ws = {id(m.w) for m in _layers(model)}
    assert len(ws) == 1 and lorahub.weights(model).numel() == config.n_modules
    with torch.no_grad():
        lorahub.weights(model).fill_(0.3)
    model(**batch_for(model)).loss.backward()
    g = lorahub.weights(model).grad
    assert g is not None and torch.equal(g, torch.zeros_like(g))  # found by search, never by gradient
    assert all(not b.requires_grad for m in _layers(model) for b in (m.A_up, m.B_up))


def test_search_uses_the_budget_and_stays_in_bounds(monkeypatch):
    _, model, _ = prepare("lorahub", "tiny-llama")
    config = lorahub.LoraHubConfig(n_modules=8, r=4, alpha=8, max_steps=6, population=3, sigma=5.0, bound=0.4)
    calls = []
    real = lorahub.objective
    monkeypatch.setattr(lorahub, "objective", lambda *a: calls.append(1) or real(*a))
    lorahub.lorahub_search(model, batch_for(model), config)
    assert len(calls) == 1 + 6 * 3  # the start point, then population x generations
    assert lorahub.weights(model).abs().max() <= 0.4


def test_upstream_count_must_match_n_modules(upstream):
    with pytest.raises(ValueError, match="n_modules"):
        lorahub.apply(fresh("tiny-llama"), lorahub.LoraHubConfig(n_modules=2, r=4, alpha=8, upstream=upstream))
