"""Pfeiffer-adapter-specific promises: one adapter per block, reading the FFN sublayer's output after its residual
connection (and, on BERT, its layer norm), as AdapterHub's seq_bn places it.

No peft oracle: peft 0.21 has no bottleneck adapters. AdapterHub's `adapters` (the library that defines seq_bn)
is not a test dependency; the one-off comparison with it is recorded in reference_impls/pfeiffer_adapter.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from impl_cases import batch_for, fresh, logits, perturb
from reference_impls import pfeiffer_adapter as pa
from reference_impls import sequential_adapter as sa
from reference_impls._adapters import blocks, hidden_of, with_hidden
from reference_impls._core import count_trainable

CONFIG = pa.PfeifferAdapterConfig(reduction_factor=4)


def _branch(a: sa.Bottleneck, z: torch.Tensor) -> torch.Tensor:
    """W_up ReLU(W_down z + b_down) + b_up, written out."""
    return F.relu(z @ a.down.weight.T + a.down.bias) @ a.up.weight.T + a.up.bias


def test_one_adapter_per_block_with_half_the_houlsby_parameters():
    model = pa.apply(fresh("tiny-bert"), CONFIG)
    adapters = [n for n, m in model.named_modules() if isinstance(m, sa.Bottleneck)]
    assert adapters == ["bert.encoder.layer.0.output.adapter", "bert.encoder.layer.1.output.adapter"]
    houlsby = sa.apply(fresh("tiny-bert"), sa.SequentialAdapterConfig(bottleneck=32 // 4))
    assert 2 * count_trainable(model) == count_trainable(houlsby)
    assert isinstance(model.bert.encoder.layer[0].output.adapter.f, torch.nn.ReLU)  # the paper's and seq_bn's f


def test_post_ln_block_reapplies_its_layer_norm_around_the_adapter():
    """BERT: y = x + dropout(dense(a)); out = LN(y + A(LN(y)))."""
    bert_output = fresh("tiny-bert").bert.encoder.layer[0].output
    layer = pa.PostLNOutputAdapter(bert_output, sa.Bottleneck(32, 8, "relu"))
    with torch.no_grad():
        layer.adapter.up.weight.normal_()
        layer.adapter.up.bias.normal_()
    a, x = torch.randn(2, 5, 64), torch.randn(2, 5, 32)
    y = a @ bert_output.dense.weight.T + bert_output.dense.bias + x
    ln = bert_output.LayerNorm
    expected = ln(y + _branch(layer.adapter, ln(y)))
    torch.testing.assert_close(layer(a, x), expected, atol=1e-5, rtol=1e-5)
    assert (expected - ln(y)).abs().max() > 0.1  # the adapter is not a no-op here


def test_pre_ln_blocks_add_the_adapter_to_the_block_output():
    """LLaMA: the block output y = x + FFN(...) becomes y + A(y); recomputed with hooks on the base model."""
    model = pa.apply(fresh("tiny-llama"), CONFIG)
    perturb(model, std=0.3)
    adapters = [block.pfeiffer_adapter for _, block in blocks(model)]
    reference = fresh("tiny-llama")
    for (_, block), a in zip(blocks(reference), adapters):
        block.register_forward_hook(
            lambda m, args, out, a=a: with_hidden(out, hidden_of(out) + _branch(a, hidden_of(out))))
    batch = batch_for(model)
    expected = logits(reference, batch)
    torch.testing.assert_close(logits(model, batch), expected, atol=1e-5, rtol=1e-5)
    assert (expected - logits(fresh("tiny-llama"), batch)).abs().max() > 0.1
