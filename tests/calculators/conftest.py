"""Tiny configs of every supported family, and a builder for the matching transformers model.

The configs cover the switches the calculator reads: grouped KV heads, explicit head_dim, biases, tied and
untied embeddings, gated and plain T5 FFNs, unequal T5 stacks, and the three Falcon layouts.
"""
from __future__ import annotations

import copy
from typing import Any

import pytest

TINY: dict[str, dict[str, Any]] = {
    "llama": dict(model_type="llama", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=100),
    "llama-bias-tied-headdim": dict(model_type="llama", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=1, head_dim=8, vocab_size=100,
                                    attention_bias=True, mlp_bias=True, tie_word_embeddings=True),
    "mistral": dict(model_type="mistral", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, vocab_size=100),
    "qwen2": dict(model_type="qwen2", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=100),
    "gemma2": dict(model_type="gemma2", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=32, vocab_size=100),
    "gemma2-default-headdim": dict(model_type="gemma2", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1, vocab_size=100),
    "qwen3": dict(model_type="qwen3", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=24, vocab_size=100),
    "qwen3-bias-default-headdim": dict(model_type="qwen3", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                       num_attention_heads=2, num_key_value_heads=1, attention_bias=True,
                                       tie_word_embeddings=True, vocab_size=100),
    "gemma3_text": dict(model_type="gemma3_text", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=1, head_dim=32, vocab_size=100),
    "phi3": dict(model_type="phi3", hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=100, pad_token_id=0),
    "olmo2": dict(model_type="olmo2", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=100, pad_token_id=0),
    "olmo2-tied-bias": dict(model_type="olmo2", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                            num_attention_heads=4, vocab_size=100, pad_token_id=0, attention_bias=True,
                            tie_word_embeddings=True),
    "gpt2": dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, vocab_size=100, n_positions=32),
    "gpt2-untied-inner": dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, vocab_size=100, n_positions=32,
                              n_inner=80, tie_word_embeddings=False),
    "bert": dict(model_type="bert", hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 vocab_size=100, max_position_embeddings=40),
    "roberta": dict(model_type="roberta", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, vocab_size=100, max_position_embeddings=42, type_vocab_size=1),
    "t5": dict(model_type="t5", d_model=64, d_kv=8, d_ff=96, num_layers=2, num_heads=4, vocab_size=100),
    "t5-gated-untied": dict(model_type="t5", d_model=64, d_kv=8, d_ff=96, num_layers=2, num_decoder_layers=3,
                            num_heads=4, vocab_size=100, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    "falcon-new-arch": dict(model_type="falcon", hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                            num_kv_heads=2, new_decoder_architecture=True, vocab_size=100),
    "falcon-multi-query": dict(model_type="falcon", hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                               vocab_size=100),
    "falcon-bias-sequential": dict(model_type="falcon", hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                                   multi_query=False, parallel_attn=False, bias=True, vocab_size=100,
                                   tie_word_embeddings=False, ffn_hidden_size=80),
}


def build_model(cfg: dict[str, Any], device: str = "cpu"):
    """The transformers model class the calculator counts, built from `cfg` (meta device: no memory)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.AutoConfig.for_model(**copy.deepcopy({k: v for k, v in cfg.items() if not k.startswith("_")}))
    with torch.device(device):
        if cfg["model_type"] in ("bert", "roberta"):
            return transformers.AutoModel.from_config(hf_cfg)
        if cfg["model_type"] == "t5":
            return transformers.T5ForConditionalGeneration(hf_cfg)
        return transformers.AutoModelForCausalLM.from_config(hf_cfg)


def linear_inventory(model) -> dict[str, tuple[int, int, bool]]:
    """name -> (d_in, d_out, has_bias) for every nn.Linear and transformers Conv1D of a model."""
    import torch
    from transformers.pytorch_utils import Conv1D

    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            out[name] = (mod.in_features, mod.out_features, mod.bias is not None)
        elif isinstance(mod, Conv1D):  # weight stored (d_in, d_out)
            out[name] = (mod.weight.shape[0], mod.nf, mod.bias is not None)
    return out


@pytest.fixture(params=sorted(TINY))
def tiny_case(request) -> tuple[str, dict[str, Any]]:
    return request.param, copy.deepcopy(TINY[request.param])


@pytest.fixture
def tiny():
    return copy.deepcopy(TINY)


@pytest.fixture
def build():
    return build_model


@pytest.fixture
def linears():
    return linear_inventory
