"""Hyperformer++-specific promises: one hypernetwork generates every adapter from (task, layer, position),
the adapter equation, per-task gradients and multi-task training of the shared generator."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from impl_cases import fresh, perturb
from reference_impls import hyperformer_plus_plus as hf
from reference_impls._composition import task_batch, task_loss

SMALL = dict(n_tasks=2, task_embedding_dim=8, task_hidden_dim=16, projected_task_embedding_dim=8, reduction_factor=4)


def adapted(arch: str = "tiny-bert"):
    torch.manual_seed(0)
    return hf.apply(fresh(arch), hf.HyperformerPlusPlusConfig(**SMALL))


def test_one_shared_hypernetwork_and_layer_and_position_ids():
    model = adapted("tiny-t5")
    layers = [m for m in model.modules() if isinstance(m, hf.HyperAdapter)]
    assert all(m._hypernet[0] is model.hypernet for m in layers)
    # T5: 2 encoder + 2 decoder blocks, an adapter after self-attention (0) and after the FFN (1) in each
    assert [(m.layer, m.position) for m in layers] == [(l, j) for l in range(4) for j in (0, 1)]
    assert sum(1 for n, _ in model.named_parameters() if "hypernet" in n) == len(list(model.hypernet.parameters()))


def test_generated_adapters_differ_by_task_layer_and_position():
    model = adapted()
    perturb(model)
    net = model.hypernet
    with torch.no_grad():
        gens = {}
        for task in (0, 1):
            hf.set_task(model, task)
            for layer in (0, 1):
                for pos in (0, 1):
                    gens[task, layer, pos] = net.generate(layer, pos)["D"]
    keys = list(gens)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            assert not torch.allclose(gens[a], gens[b]), (a, b)
    assert gens[0, 0, 0].shape == (32 // 4, 32)  # D: (m, d)


def _layer_norm(x, gamma=None, beta=None, eps=1e-5):
    y = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps)
    return y if gamma is None else y * gamma + beta


def test_adapter_computes_the_papers_equation():
    """A(h) = h + LN_{γ,β}(U f(D h + b_D) + b_U): the conditional layer norm sits after the up-projection,
    before the residual (the authors' code: add_layer_norm_after_adapter=True, before=False)."""
    model = adapted()
    perturb(model)
    layer = next(m for m in model.modules() if isinstance(m, hf.HyperAdapter))
    x = torch.randn(2, 5, layer.base.in_features)
    with torch.no_grad():
        w = model.hypernet.generate(layer.layer, layer.position)
        h = layer.base(x)
        u = F.silu(h @ w["D"].T + w["b_D"]) @ w["U"].T + w["b_U"]
        expected = h + _layer_norm(u, w["gamma"], w["beta"])
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
        input_side = h + F.silu(_layer_norm(h, w["gamma"], w["beta"]) @ w["D"].T + w["b_D"]) @ w["U"].T + w["b_U"]
        assert not torch.allclose(layer(x), input_side, atol=1e-3)


def test_generators_read_the_layer_normalised_projected_task_embedding():
    """I = LN(h_I([z_τ; i_l; p_j])) (eps 1e-6, the code's unique_hyper_net_layer_norm), and every generated
    tensor is a linear map of that I."""
    model = adapted()
    perturb(model)
    net = model.hypernet
    hf.set_task(model, 1)
    with torch.no_grad():
        zil = torch.cat([net.task_embeddings[1], net.layer_embeddings[0], net.position_embeddings[1]])
        I = _layer_norm(net.projector(zil), eps=1e-6)
        w = net.generate(0, 1)
        d, m = net.d, net.m
        for key, gen, shape in [("D", net.down_weight, (m, d)), ("b_D", net.down_bias, (m,)),
                                ("U", net.up_weight, (d, m)), ("b_U", net.up_bias, (d,)),
                                ("gamma", net.ln_weight, (d,)), ("beta", net.ln_bias, (d,))]:
            torch.testing.assert_close(w[key], (gen.weight @ I + gen.bias).view(shape), atol=1e-5, rtol=1e-5)
        raw = net.projector(zil)
        assert not torch.allclose(net.down_bias.weight @ raw + net.down_bias.bias, w["b_D"], atol=1e-4)


def test_every_adapter_starts_as_the_identity():
    model = adapted()
    layer = next(m for m in model.modules() if isinstance(m, hf.HyperAdapter))
    x = torch.randn(2, 5, layer.base.in_features)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer.base(x))


def test_a_tasks_batch_trains_its_own_embedding_and_the_shared_generator_only():
    model = adapted()
    perturb(model)
    hf.set_task(model, 1)
    model(**task_batch(model, 1)).loss.backward()
    net = model.hypernet
    assert net.task_embeddings.grad[0].abs().sum() == 0 and net.task_embeddings.grad[1].abs().sum() > 0
    for gen in (net.down_weight, net.up_weight, net.ln_weight, net.projector[0]):
        assert gen.weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_multi_task_training_lowers_both_tasks_losses_with_one_generator():
    model = adapted()
    batches = {t: task_batch(model, t, seed=t) for t in (0, 1)}
    before = {}
    for t in (0, 1):
        hf.set_task(model, t)
        before[t] = task_loss(model, batches[t])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(40):  # alternate the tasks, as multi-task training interleaves them
        t = step % 2
        hf.set_task(model, t)
        opt.zero_grad()
        model(**batches[t]).loss.backward()
        opt.step()
    for t in (0, 1):
        hf.set_task(model, t)
        assert task_loss(model, batches[t]) < 0.8 * before[t], t
    # each task's adapters suit that task: swapping the task embedding hurts
    hf.set_task(model, 1)
    assert task_loss(model, batches[0]) > task_loss(hf.set_task(model, 0), batches[0])
