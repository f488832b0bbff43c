"""Prefix-tuning-specific promises, and peft's prefix tuning as the oracle."""
from __future__ import annotations

import pytest
import torch
import transformers

from impl_cases import batch_for, formula_count, fresh, logits, perturb
from reference_impls import prefix_tuning as pt
from reference_impls._core import count_trainable, tiny_model

ATOL, RTOL = 1e-4, 1e-4  # float32 logits of magnitude ~5 along different summation orders (see test_common)

# The expression in the catalog's note: the count while the reparameterisation MLP is in use. It replaces
# the catalog's total rather than adding to it: during training the prefix is the MLP's output, not a
# parameter.
TRAINING_COUNT = ("n_virtual_tokens * d_model + d_model * projection_hidden + projection_hidden"
                  " + projection_hidden * n_layers * 2 * n_kv_heads * d_head + n_layers * 2 * n_kv_heads * d_head")


@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-t5", "tiny-llama", "tiny-gpt2"])
def test_training_count_includes_the_reparameterization_mlp(arch):
    config = pt.PrefixTuningConfig(n_virtual_tokens=4, projection_hidden=16)
    model = pt.apply(fresh(arch), config)
    assert count_trainable(model) == formula_count("prefix-tuning", fresh(arch), config, {"total": TRAINING_COUNT})


@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-t5", "tiny-llama", "tiny-gpt2"])
def test_dropping_the_mlp_keeps_outputs_and_the_prefix_alone_trains(arch):
    config = pt.PrefixTuningConfig(n_virtual_tokens=4, projection_hidden=16)
    model = pt.apply(fresh(arch), config)
    batch = batch_for(model)
    before = logits(model, batch)
    pt.drop_projection(model)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prefix_encoder.prefix"]
    torch.testing.assert_close(logits(model, batch), before, atol=1e-6, rtol=1e-6)  # same values, same path


def test_gqa_prefix_has_kv_heads_not_query_heads():
    model = pt.apply(fresh("tiny-llama"), pt.PrefixTuningConfig(n_virtual_tokens=4, prefix_projection=False))
    cache = model.prefix_encoder.cache(batch_size=3)
    k, v = cache.layers[0].keys, cache.layers[0].values
    assert k.shape == v.shape == (3, 2, 4, 8)  # (B, n_kv_heads, P, d_head)


@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-llama"])
def test_attention_mask_gets_ones_for_the_prefix(arch):
    model = pt.apply(fresh(arch), pt.PrefixTuningConfig(n_virtual_tokens=4, prefix_projection=False))
    batch = batch_for(model)
    no_mask = {k: v for k, v in batch.items() if k != "attention_mask"}  # the model then attends to everything
    torch.testing.assert_close(logits(model, batch), logits(model, no_mask), atol=1e-5, rtol=1e-5)


def test_t5_self_attention_equals_attention_over_the_explicitly_prefixed_keys_and_values():
    model = pt.apply(fresh("tiny-t5"), pt.PrefixTuningConfig(n_virtual_tokens=3, prefix_projection=False))
    attention = model.encoder.block[0].layer[0].SelfAttention  # the block that computes the position bias
    kv = model.prefix_encoder.kv().detach()  # (2L, n_kv, P, hs)
    model.prefix_encoder.kv_now = kv  # what the model's pre-hook sets before the blocks run
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(2, 1, 1, 5)
    mask[1, ..., -2:] = torch.finfo(torch.float32).min  # the second sequence has two padding positions
    with torch.no_grad():
        out = attention(x, mask=mask)[0]
        H, hs = attention.n_heads, attention.key_value_proj_dim
        split = lambda t: t.view(2, -1, H, hs).transpose(1, 2)  # noqa: E731  (B, H, T, hs)
        q = split(attention.q(x))
        k = torch.cat([kv[0].expand(2, -1, -1, -1), split(attention.k(x))], dim=2)  # (B, H, P+T, hs)
        v = torch.cat([kv[1].expand(2, -1, -1, -1), split(attention.v(x))], dim=2)
        bias = attention.compute_bias(5, 5) + mask                                  # (B, H, T, T)
        scores = q @ k.transpose(-1, -2) + torch.cat([torch.zeros(2, H, 5, 3), bias], dim=-1)
        expected = attention.o((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, H * hs))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_t5_decoder_stays_causal_with_a_prefix():
    model = pt.apply(fresh("tiny-t5"), pt.PrefixTuningConfig(n_virtual_tokens=3, prefix_projection=False))
    batch = {k: v for k, v in batch_for(model).items() if k != "labels"}
    decoder = torch.randint(1, 100, (4, 6), generator=torch.Generator().manual_seed(0))
    changed = decoder.clone()
    changed[:, -1] = (changed[:, -1] % 98) + 1  # a different last token
    with torch.no_grad():
        a = model(**batch, decoder_input_ids=decoder).logits
        b = model(**batch, decoder_input_ids=changed).logits
    torch.testing.assert_close(a[:, :-1], b[:, :-1])  # earlier positions cannot see the last token
    assert not torch.allclose(a[:, -1], b[:, -1])


def _copy_prefix_into_peft(ours, theirs_encoder, projection: bool) -> None:
    mine = ours.prefix_encoder
    with torch.no_grad():
        if projection:
            theirs_encoder.embedding.weight.copy_(mine.P_prime)
            theirs_encoder.transform[0].load_state_dict(mine.mlp[0].state_dict())
            theirs_encoder.transform[2].load_state_dict(mine.mlp[2].state_dict())
        else:
            theirs_encoder.embedding.weight.copy_(mine.prefix)


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-gpt2"])
def test_matches_peft_on_causal_lms(arch):
    peft = pytest.importorskip("peft")
    config = pt.PrefixTuningConfig(n_virtual_tokens=4, prefix_projection=False)
    ours = pt.apply(fresh(arch), config)
    theirs = peft.get_peft_model(fresh(arch), peft.PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=config.n_virtual_tokens))
    assert theirs.get_nb_trainable_parameters()[0] == count_trainable(ours)
    _copy_prefix_into_peft(ours, theirs.prompt_encoder["default"], projection=False)
    batch = batch_for(ours)
    torch.testing.assert_close(logits(ours, batch), logits(theirs, batch), atol=ATOL, rtol=RTOL)


@pytest.mark.peft_oracle
def test_matches_peft_on_bert_with_the_reparameterization_mlp():
    peft = pytest.importorskip("peft")
    bert = tiny_model("tiny-bert").bert  # peft runs BERT prefix tuning as feature extraction on BertModel
    config = pt.PrefixTuningConfig(n_virtual_tokens=4, prefix_projection=True, projection_hidden=16)
    ours = pt.apply(_copy(bert), config)
    perturb(ours)
    theirs = peft.get_peft_model(_copy(bert), peft.PrefixTuningConfig(
        task_type="FEATURE_EXTRACTION", num_virtual_tokens=4, prefix_projection=True, encoder_hidden_size=16))
    assert theirs.get_nb_trainable_parameters()[0] == count_trainable(ours)
    _copy_prefix_into_peft(ours, theirs.prompt_encoder["default"], projection=True)
    batch = batch_for(ours)
    del batch["labels"]
    with torch.no_grad():
        mine, peft_out = ours(**batch).last_hidden_state, theirs(**batch).last_hidden_state
    torch.testing.assert_close(mine, peft_out, atol=ATOL, rtol=RTOL)


def _copy(model: transformers.PreTrainedModel) -> transformers.PreTrainedModel:
    import copy

    return copy.deepcopy(model)
