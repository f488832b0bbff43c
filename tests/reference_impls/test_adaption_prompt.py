"""LLaMA-Adapter-specific promises: a gated softmax over the prompts of its own, next to the untouched
attention over the tokens, in the top layers only; peft's AdaptionPromptModel as the oracle on tiny Llama
(peft supports Llama, Mistral and GPT-2 only, and this implementation LLaMA-family decoders only, so BERT
and T5 have no comparison)."""
from __future__ import annotations

import math

import pytest
import torch

from impl_cases import batch_for, formula_count, fresh, logits, perturb
from peft_parity import assert_matches_peft
from reference_impls import adaption_prompt as ap
from reference_impls._core import count_trainable


def _captured_inputs(model, layer):
    """Run the model once and keep what the adapted attention of `layer` receives."""
    seen = {}
    attention = model.model.layers[layer].self_attn

    def hook(module, args, kwargs):
        seen.update(kwargs, args=args)
    handle = attention.register_forward_pre_hook(hook, with_kwargs=True)
    with torch.no_grad():
        model(**batch_for(model))
    handle.remove()
    return attention, seen


def test_prompt_attention_is_a_gated_softmax_of_its_own_per_head():
    model = ap.apply(fresh("tiny-llama"), ap.AdaptionPromptConfig(adapter_len=3, adapter_layers=1))
    attention, seen = _captured_inputs(model, layer=1)
    with torch.no_grad():
        attention.gate.fill_(0.7)
    x, (cos, sin) = seen["hidden_states"], seen["position_embeddings"]  # (B, T, 32); (B, T, 8) each
    kwargs = {k: v for k, v in seen.items() if k not in ("args", "hidden_states", "position_embeddings")}
    base = attention.base
    Wq, Wk, Wv, Wo = (base.q_proj.weight, base.k_proj.weight, base.v_proj.weight, base.o_proj.weight)
    P, g, hs = attention.prompt, 0.7, 8  # 4 query heads, 2 key/value heads of width 8
    heads = []
    with torch.no_grad():
        for h in range(4):
            q = x @ Wq[h * hs:(h + 1) * hs].T  # (B, T, hs)
            half = hs // 2  # rotary: pairs (i, i + hs/2) rotated by the position's angle
            q = torch.cat([q[..., :half] * cos[..., :half] - q[..., half:] * sin[..., :half],
                           q[..., half:] * cos[..., half:] + q[..., :half] * sin[..., half:]], dim=-1)
            kv = h // 2  # grouped-query: heads 0, 1 share kv head 0
            Kp, Vp = P @ Wk[kv * hs:(kv + 1) * hs].T, P @ Wv[kv * hs:(kv + 1) * hs].T  # (3, hs), no position
            heads.append(g * torch.softmax(q @ Kp.T / math.sqrt(hs), dim=-1) @ Vp)  # (B, T, hs)
        expected = base(x, (cos, sin), **kwargs)[0] + torch.cat(heads, dim=-1) @ Wo.T
        got = attention(x, (cos, sin), **kwargs)[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_closed_gate_is_the_base_attention_exactly():
    model = ap.apply(fresh("tiny-llama"), ap.AdaptionPromptConfig(adapter_len=3, adapter_layers=2))
    batch = batch_for(model)
    assert torch.equal(logits(model, batch), logits(fresh("tiny-llama"), batch))


def test_only_the_topmost_layers_get_prompts_and_the_count_is_the_formula():
    config = ap.AdaptionPromptConfig(adapter_len=3, adapter_layers=1)
    model = ap.apply(fresh("tiny-llama"), config)
    assert isinstance(model.model.layers[1].self_attn, ap.AdaptedAttention)
    assert not isinstance(model.model.layers[0].self_attn, ap.AdaptedAttention)
    clamped = ap.AdaptionPromptConfig(adapter_len=3, adapter_layers=30)  # more layers than the model has: all
    model = ap.apply(fresh("tiny-llama"), clamped)
    assert count_trainable(model) == 2 * (3 * 32 + 1) == formula_count("adaption-prompt", fresh("tiny-llama"), clamped)


@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-t5", "tiny-gpt2"])
def test_other_architectures_are_refused(arch):
    with pytest.raises(ValueError, match="LLaMA-family"):
        ap.apply(fresh(arch), ap.AdaptionPromptConfig(adapter_len=3, adapter_layers=1))


def _link(mine, layer):
    return [(mine.prompt, layer.adaption_prompt, lambda t: t[0]),  # peft keeps a leading batch axis of 1
            (mine.gate, layer.adaption_gate)]


@pytest.mark.peft_oracle
def test_matches_peft_adaption_prompt_on_tiny_llama():
    peft = pytest.importorskip("peft")
    config = ap.AdaptionPromptConfig(adapter_len=4, adapter_layers=1)
    ours = ap.apply(fresh("tiny-llama"), config)
    perturb(ours)  # open the gate, so that the prompts matter and get gradients
    theirs = peft.get_peft_model(fresh("tiny-llama"), peft.AdaptionPromptConfig(
        adapter_len=4, adapter_layers=1, task_type="CAUSAL_LM"))
    assert count_trainable(ours) == formula_count("adaption-prompt", fresh("tiny-llama"), config)
    assert_matches_peft(ours, theirs, ["model.layers.1.self_attn"], _link, mergeable=False)
