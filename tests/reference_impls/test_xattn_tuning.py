"""Xattn Tuning promises: only the decoder's cross-attention projections and the (shared) embeddings change,
in every decoder block; the count is the paper's 4 · d_model · n_heads · d_head per decoder block plus one
embedding table; decoder-only and encoder-only models are refused."""
from __future__ import annotations

import pytest
import torch

from impl_cases import fresh, run_training
from reference_impls import xattn_tuning as xt
from reference_impls._core import count_trainable, merge
from reference_impls._partial import effective_weights

CONFIG = xt.XattnTuningConfig()


def test_only_cross_attention_and_embeddings_change_in_every_decoder_block():
    base = fresh("tiny-t5")
    names = [n for n, _ in base.named_parameters()]
    model = xt.apply(fresh("tiny-t5"), CONFIG)
    run_training("xattn-tuning", model, CONFIG, steps=3)
    merge(model)
    merged = effective_weights(model, names)
    changed = {n for n, w0 in base.named_parameters() if not torch.equal(merged[n], w0)}
    expected = {f"decoder.block.{i}.layer.1.EncDecAttention.{m}.weight"
                for i in range(base.config.num_decoder_layers) for m in "qkvo"} | {"shared.weight"} | {
                f"decoder.block.{i}.layer.1.layer_norm.weight" for i in range(base.config.num_decoder_layers)}
    assert changed == expected
    # the embedding change reaches every user of the tied table: encoder, decoder and output projection
    assert torch.equal(model.encoder.embed_tokens.weight, model.lm_head.weight)


def test_count_is_four_cross_attention_matrices_per_decoder_block_plus_the_embeddings():
    base = fresh("tiny-t5")
    c = base.config
    model = xt.apply(fresh("tiny-t5"), CONFIG)
    # the authors' code trains every "encoder_attn*" parameter: the projections and the sublayer's layer norm
    expected = c.num_decoder_layers * (4 * c.d_model * c.num_heads * c.d_kv + c.d_model) + c.vocab_size * c.d_model
    assert count_trainable(model) == expected


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-bert"])
def test_models_without_cross_attention_are_refused(arch):
    with pytest.raises(ValueError, match="cross-attention"):
        xt.apply(fresh(arch), CONFIG)
