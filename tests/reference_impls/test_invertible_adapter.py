"""Invertible-adapter-specific promises: the NICE coupling and its exact inverse, the coupling on the embeddings
on the way in and its inverse before the output embedding layer, with one set of F, G for both.

No peft oracle: peft 0.21 has no invertible adapters. AdapterHub's `adapters` is not a test dependency; the
one-off comparison with its NICECouplingBlock and seq_bn_inv is recorded in reference_impls/invertible_adapter.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from impl_cases import batch_for, fresh, logits, perturb
from reference_impls import invertible_adapter as ia
from reference_impls._adapters import blocks
from reference_impls._core import count_trainable

CONFIG = ia.InvertibleAdapterConfig(reduction_factor=4)


def _coupling() -> ia.NICECoupling:
    c = ia.NICECoupling(32, 2, "relu")
    with torch.no_grad():
        for p in c.parameters():
            p.normal_(std=0.5)
    return c


def _mlp(net, x):
    return F.relu(x @ net[0].weight.T + net[0].bias) @ net[2].weight.T + net[2].bias


def test_coupling_is_the_additive_nice_step_written_out():
    c = _coupling()
    e = torch.randn(2, 5, 32)
    e1, e2 = e[..., :16], e[..., 16:]
    o1 = e1 + _mlp(c.F, e2)
    o2 = e2 + _mlp(c.G, o1)
    torch.testing.assert_close(c(e), torch.cat([o1, o2], -1), atol=1e-5, rtol=1e-5)
    assert c.F[0].weight.shape == (8, 16)  # (d/2) // inv_reduction_factor hidden units


def test_inverse_undoes_the_coupling_in_both_orders():
    c = _coupling()
    e = torch.randn(2, 5, 32)
    assert (c(e) - e).abs().max() > 1.0  # far from the identity
    torch.testing.assert_close(c(c(e), inverse=True), e, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c(c(e, inverse=True)), e, atol=1e-5, rtol=1e-5)


def test_model_applies_the_coupling_to_the_embeddings_and_its_inverse_before_the_output_layer():
    model = ia.apply(fresh("tiny-llama"), CONFIG)
    perturb(model, std=0.5)
    c = model.invertible_adapter
    seen = {}
    blocks(model)[0][1].register_forward_pre_hook(
        lambda m, args, kw: seen.update(block_in=args[0] if args else kw["hidden_states"]), with_kwargs=True)
    model.lm_head.register_forward_pre_hook(lambda m, args: seen.update(head_in=args[0]))
    model.model.norm.register_forward_hook(lambda m, args, out: seen.update(norm_out=out))
    batch = batch_for(model)
    logits(model, batch)
    embeds = model.model.embed_tokens(batch["input_ids"])
    torch.testing.assert_close(seen["block_in"], c(embeds), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(seen["head_in"], c(seen["norm_out"], inverse=True), atol=1e-5, rtol=1e-5)


def test_one_coupling_serves_both_directions_and_the_count_adds_it_once():
    model = ia.apply(fresh("tiny-bert"), CONFIG)
    names = [n for n, _ in model.named_parameters() if "invertible_adapter" in n]
    assert names == ["invertible_adapter.F.0.weight", "invertible_adapter.F.0.bias", "invertible_adapter.F.2.weight",
                     "invertible_adapter.F.2.bias", "invertible_adapter.G.0.weight", "invertible_adapter.G.0.bias",
                     "invertible_adapter.G.2.weight", "invertible_adapter.G.2.bias"]
    d, h, m, L = 32, 8, 8, 2  # h = (d / 2) // 2, m = d // reduction_factor
    assert count_trainable(model) == L * (2 * d * m + m + d) + 4 * (d // 2) * h + 2 * h + 2 * (d // 2)


def test_gradient_reaches_the_coupling_through_both_hooks():
    """F's first layer gets gradient from the input side and from the inverse on the output side."""
    model = ia.apply(fresh("tiny-gpt2"), CONFIG)
    perturb(model, std=0.5)
    batch = batch_for(model)
    model(**batch).loss.backward()
    assert model.invertible_adapter.F[0].weight.grad.abs().sum() > 0
    # with the output-side hook removed the gradient changes: the inverse contributes its share
    full = model.invertible_adapter.F[0].weight.grad.clone()
    model.zero_grad()
    model.lm_head._forward_pre_hooks.clear()
    model(**batch).loss.backward()
    assert not torch.allclose(model.invertible_adapter.F[0].weight.grad, full)
