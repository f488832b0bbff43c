"""LongLoRA-specific promises: S²-Attn recomputed token by token, full attention at inference, the trained
embeddings and norms, and refusal of architectures whose attention is not Llama's. peft 0.21 has no
LongLoRA, so there is no oracle test."""
from __future__ import annotations

import math

import pytest
import torch

from impl_cases import batch_for, fresh, logits, perturb
from reference_impls import longlora
from reference_impls._core import count_trainable


def _explicit_s2(q, k, v, G, scaling, keep=None):
    """Each query attends, causally, to the keys of its own group; in the second half of the heads the
    groups are those of the sequence rolled by -G/2: token t sits at slot (t - G/2) mod T."""
    B, H, T, D = q.shape
    s = G // 2
    out = torch.zeros(B, T, H, D)
    for b in range(B):
        for head in range(H):
            shifted = head >= H // 2
            slot = [(t - s) % T if shifted else t for t in range(T)]  # slot of each token
            for t in range(T):
                keys = [u for u in range(T) if slot[u] // G == slot[t] // G and slot[u] <= slot[t]
                        and (keep is None or keep[b, u])]
                if not keys:  # a padded query with only padded keys: no defined output
                    continue
                w = torch.softmax(torch.stack([q[b, head, t] @ k[b, head, u] * scaling for u in keys]), 0)
                out[b, t, head] = sum(wi * v[b, head, u] for wi, u in zip(w, keys))
    return out


def test_shifted_sparse_attention_matches_token_by_token_recomputation():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 8, 3) for _ in range(3))  # (B, H, T, D), G = 4: two groups, shift 2
    got = longlora.shifted_sparse_attention(q, k, v, group_size=4, scaling=0.5)
    torch.testing.assert_close(got, _explicit_s2(q, k, v, 4, 0.5), atol=1e-6, rtol=1e-5)
    # the shift matters: heads 2 and 3 placed first (unshifted) give a different result
    swap = [2, 3, 0, 1]
    unshifted = longlora.shifted_sparse_attention(q[:, swap], k[:, swap], v[:, swap], group_size=4, scaling=0.5)
    assert (unshifted[:, :, :2] - got[:, :, 2:]).abs().max() > 0.1


def test_padded_keys_are_masked_inside_groups():
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 2, 8, 3) for _ in range(3))
    keep = torch.tensor([[True] * 6 + [False] * 2])  # last two tokens padded
    got = longlora.shifted_sparse_attention(q, k, v, group_size=4, scaling=1.0, key_keep=keep)
    want = _explicit_s2(q, k, v, 4, 1.0, keep)
    torch.testing.assert_close(got[:, :6], want[:, :6], atol=1e-6, rtol=1e-5)  # the unpadded queries
    # tokens 0 and 1 share a shifted group with the padded tokens 6 and 7, which they would otherwise see
    unmasked = longlora.shifted_sparse_attention(q, k, v, group_size=4, scaling=1.0)
    assert (unmasked[:, :2, 1] - got[:, :2, 1]).abs().max() > 1e-3


def test_training_uses_s2_attention_and_eval_uses_full_attention():
    model = longlora.apply(fresh("tiny-llama"), longlora.LongLoRAConfig(r=4, alpha=8))
    batch = batch_for(model)
    base = fresh("tiny-llama")
    torch.testing.assert_close(logits(model, batch), logits(base, batch))  # eval: full attention, B = 0
    model.train()
    with torch.no_grad():
        train_out = model(**batch).logits
    assert (train_out - logits(base, batch)).abs().max() > 1e-2  # the grouped attention sees less context


def test_embeddings_and_all_rmsnorms_are_trained_beside_lora():
    base = fresh("tiny-llama")
    model = longlora.apply(fresh("tiny-llama"), longlora.LongLoRAConfig(r=4, alpha=8))
    c = base.config
    lora = c.num_hidden_layers * 4 * ((32 + 32) + (32 + 16) + (32 + 16) + (32 + 32))  # r (d_in + d_out): q, k, v, o
    norms = (2 * c.num_hidden_layers + 1) * c.hidden_size
    assert count_trainable(model) == lora + norms + c.vocab_size * c.hidden_size


def test_group_size_must_divide_the_sequence():
    model = longlora.apply(fresh("tiny-llama"), longlora.LongLoRAConfig(r=4, group_size_ratio=0.42))
    model.train()
    with pytest.raises(ValueError, match="not a multiple of its group size"):
        model(**batch_for(model))  # T = 12: G = int(5.04) = 5


@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-t5", "tiny-gpt2"])
def test_other_architectures_are_refused(arch):
    with pytest.raises(ValueError, match="re-implements Llama's attention"):
        longlora.apply(fresh(arch), longlora.LongLoRAConfig())


def test_attention_module_in_training_is_rope_then_s2_attention_then_o_proj():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model = longlora.apply(fresh("tiny-llama"), longlora.LongLoRAConfig(r=4, alpha=8))
    perturb(model)
    attn = model.model.layers[0].self_attn
    att = attn.base
    torch.manual_seed(2)
    x = torch.randn(2, 8, 32)
    cos, sin = model.model.rotary_emb(x, torch.arange(8)[None].expand(2, 8))
    attn.train()
    with torch.no_grad():
        got, _ = attn(x, position_embeddings=(cos, sin), attention_mask=None)
        q = att.q_proj(x).view(2, 8, 4, 8).transpose(1, 2)
        k = att.k_proj(x).view(2, 8, 2, 8).transpose(1, 2)
        v = att.v_proj(x).view(2, 8, 2, 8).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)  # grouped-query: kv head j serves 2j, 2j+1
        want = att.o_proj(_explicit_s2(q, k, v, 2, 8 ** -0.5).reshape(2, 8, 32))  # G = 8 / 4
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
