"""Cartridge-specific promises: at init the model answers as if the corpus's first p tokens stood in its
context, the sink rows never change, the cache is stored in peft's layout; peft's CARTRIDGE as the oracle on
tiny Llama (peft serves it like prefix tuning; this implementation initialises from a causal decoder's cache,
so BERT and T5 have no comparison)."""
from __future__ import annotations

import pytest
import torch

from impl_cases import batch_for, formula_count, fresh, logits, perturb
from reference_impls import cartridge
from reference_impls._core import count_trainable, train

IDS = (7, 3, 9, 4, 1)


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-gpt2"])
def test_at_init_the_model_reads_the_corpus_tokens_from_the_cache(arch):
    model = cartridge.apply(fresh(arch), cartridge.CartridgeConfig(n_virtual_tokens=5, init_token_ids=IDS))
    batch = batch_for(model)
    ids = batch["input_ids"]
    base = fresh(arch)
    with torch.no_grad():
        expected = base(input_ids=torch.cat([torch.tensor(IDS).expand(len(ids), -1), ids], dim=1)).logits[:, 5:]
    torch.testing.assert_close(logits(model, batch), expected, atol=1e-5, rtol=1e-5)


def test_cache_layout_is_layer_key_value_head_major():
    model = cartridge.apply(fresh("tiny-llama"), cartridge.CartridgeConfig(n_virtual_tokens=5, init_token_ids=IDS))
    with torch.no_grad():
        cache = fresh("tiny-llama")(input_ids=torch.tensor([IDS]), use_cache=True).past_key_values
    kv = model.cartridge.kv()  # (2L, n_kv, p, hs)
    assert kv.shape == (4, 2, 5, 8)  # 2 layers x (key, value), 2 kv heads (GQA), 5 tokens, d_head 8
    torch.testing.assert_close(kv[2], cache.layers[1].keys[0])    # layer 1's keys
    torch.testing.assert_close(kv[3], cache.layers[1].values[0])  # layer 1's values


def test_sink_rows_stay_and_the_rest_trains():
    config = cartridge.CartridgeConfig(n_virtual_tokens=5, n_frozen_tokens=2, init_token_ids=IDS)
    model = cartridge.apply(fresh("tiny-llama"), config)
    kv0 = model.cartridge.kv().detach().clone()
    train(model, batch_for(model), steps=3, lr=1e-2)
    kv = model.cartridge.kv()
    assert torch.equal(kv[:, :, :2], kv0[:, :, :2])
    assert (kv[:, :, 2:] - kv0[:, :, 2:]).abs().amax(dim=(0, 1, 3)).min() > 0  # every other token moved
    assert count_trainable(model) == 2 * 2 * 3 * 2 * 8 == formula_count("cartridge", fresh("tiny-llama"), config)


@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-t5"])
def test_non_decoders_are_refused(arch):
    with pytest.raises(ValueError, match="causal decoder"):
        cartridge.apply(fresh(arch), cartridge.CartridgeConfig(n_virtual_tokens=4))


def test_bad_init_tokens_and_frozen_counts_are_refused():
    with pytest.raises(ValueError, match="init_token_ids"):
        cartridge.apply(fresh("tiny-llama"), cartridge.CartridgeConfig(n_virtual_tokens=4, init_token_ids=(1, 2)))
    with pytest.raises(ValueError, match="n_frozen_tokens"):
        cartridge.apply(fresh("tiny-llama"), cartridge.CartridgeConfig(n_virtual_tokens=4, n_frozen_tokens=5))


@pytest.mark.peft_oracle
def test_matches_peft_cartridge_outputs_gradients_and_count():
    peft = pytest.importorskip("peft")
    config = cartridge.CartridgeConfig(n_virtual_tokens=5, n_frozen_tokens=1, init_token_ids=IDS)
    ours = cartridge.apply(fresh("tiny-llama"), config)
    perturb(ours)
    theirs = peft.get_peft_model(fresh("tiny-llama"), peft.CartridgeConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=5, num_frozen_tokens=1))
    encoder = theirs.prompt_encoder["default"]
    assert theirs.get_nb_trainable_parameters()[0] == count_trainable(ours) == formula_count(
        "cartridge", fresh("tiny-llama"), config)
    encoder.load_prompt_embeddings(torch.cat([ours.cartridge.frozen, ours.cartridge.trainable]).detach())
    batch = batch_for(ours)
    torch.testing.assert_close(logits(ours, batch), logits(theirs, batch), atol=1e-5, rtol=1e-5)
    for model in (ours, theirs):
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
    assert ours.cartridge.trainable.grad.abs().max() > 0
    torch.testing.assert_close(ours.cartridge.trainable.grad, encoder.trainable_embedding.grad, atol=1e-5, rtol=1e-4)
