"""LLaMA-Adapter: adaption prompts in the top layers, attended through a zero-initialised gate.

Equation:   in each of the topmost L layers, per head:
              out = Attention(q, K, V) + g_l · softmax(q K_pᵀ / √d_head) V_p,   then W_o as usual,
              K_p = P_l W_k,  V_p = P_l W_v,  P_l ∈ R^{adapter_len × d_model} trained, g_l ∈ R trained (g_l = 0 at init)
            q carries the layer's rotary position; K_p does not (the prompts have no position).
Trainable:  min(adapter_layers, n_layers) * (adapter_len * d_model + 1)      (catalog: trainable_params.total)
Paper:      "LLaMA-Adapter: Efficient Fine-tuning of Large Language Models with Zero-initialized Attention",
            Renrui Zhang et al., 2024 (ICLR 2024), arXiv 2303.16199.

The prompts pass through the layer's own frozen k_proj and v_proj, like prefix-tuning prefixes, but the
attention over them is a softmax of its own, scaled by the gate, and added to the attention over the real
tokens (whose softmax is untouched). With g_l = 0 the adapted model is exactly the pretrained one, and the
prompts' influence grows as training opens the gate. The sum of the two attention outputs goes through the
layer's output projection W_o (applied to the prompt part here without W_o's bias, which the real part
already carries). The prompts are drawn from N(0, 1), like the authors' nn.Embedding and peft.

LLaMA-family decoders only (self_attn with q/k/v/o_proj and rotary positions; grouped-query attention
repeats each key/value head across its group). A layer count above the model's is clamped to n_layers
(peft raises an error instead). Not mergeable: the prompts are attended to, not added to a weight.

Checked against: the paper's zero-init attention (separate softmax over the prompt scores, gated,
next to the word-token attention); the authors' OpenGVLab/LLaMA-Adapter alpaca_finetuning_v1 (one scalar
gate per layer, zero init, no tanh); peft 0.21.2 `peft/tuners/adaption_prompt/layer.py` (AdaptedAttention),
whose outputs, gradients and trainable count tests/reference_impls/test_adaption_prompt.py compares on tiny
Llama.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import arch_symbols, family, freeze_base, replace_module


@dataclass
class AdaptionPromptConfig:
    adapter_len: int = 10              # prompt vectors per adapted layer (the authors' Alpaca script)
    adapter_layers: int = 30           # topmost layers that get prompts (30 of LLaMA-7B's 32)
    target_modules: str = "self_attn"  # the attention submodule of each decoder layer


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class AdaptedAttention(nn.Module):
    """A LLaMA attention module plus a gated attention over adapter_len prompt vectors."""

    def __init__(self, base: nn.Module, adapter_len: int, n_heads: int, n_kv_heads: int, d_model: int) -> None:
        super().__init__()
        if hasattr(base, "q_norm") or hasattr(base, "k_norm"):
            raise NotImplementedError("adaption prompts on attention with q/k norms (Qwen3, Gemma 3, OLMo-2) "
                                      "are not implemented")
        self.base = base
        self.n_heads, self.n_kv_heads, self.d_head = n_heads, n_kv_heads, base.head_dim
        self.prompt = nn.Parameter(torch.randn(adapter_len, d_model))  # (K, d_model), N(0, 1)
        # zero gate: the prompt attention is multiplied by 0, so the layer starts equal to the base layer
        self.gate = nn.Parameter(torch.zeros(1))

    def prompt_attention(self, hidden_states: torch.Tensor,
                         position_embeddings: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """g · softmax(q K_pᵀ / √d_head) V_p, through W_o (no bias). (B, T, d_model) -> (B, T, d_model)"""
        attn, (B, T, _) = self.base, hidden_states.shape
        H, Hkv, hs, K = self.n_heads, self.n_kv_heads, self.d_head, self.prompt.shape[0]
        q = attn.q_proj(hidden_states).view(B, T, H, hs).transpose(1, 2)  # (B, H, T, hs)
        cos, sin = position_embeddings  # (B, T, hs) each
        q = q * cos.unsqueeze(1) + rotate_half(q) * sin.unsqueeze(1)  # rotary position, as the base layer does
        k = attn.k_proj(self.prompt).view(K, Hkv, hs).transpose(0, 1)  # (Hkv, K, hs), no position
        v = attn.v_proj(self.prompt).view(K, Hkv, hs).transpose(0, 1)  # (Hkv, K, hs)
        k = k.repeat_interleave(H // Hkv, dim=0)  # (H, K, hs): each kv head serves its query group
        v = v.repeat_interleave(H // Hkv, dim=0)  # (H, K, hs)
        scores = q @ k.transpose(-1, -2).to(q.dtype) / math.sqrt(hs)  # (B, H, T, K)
        weights = self.gate * F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)  # its own softmax
        out = (weights @ v.to(q.dtype)).transpose(1, 2).reshape(B, T, H * hs)  # (B, T, H*hs)
        return F.linear(out, attn.o_proj.weight)  # (B, T, d_model)

    def forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                *args, **kwargs):
        out, *rest = self.base(hidden_states, position_embeddings, *args, **kwargs)  # out: (B, T, d_model)
        return (out + self.prompt_attention(hidden_states, position_embeddings), *rest)


def apply(model: nn.Module, config: AdaptionPromptConfig) -> nn.Module:
    if family(model) != "llama":
        raise ValueError(f"adaption prompts need a LLaMA-family decoder (rotary self_attn with q/k/v/o_proj); "
                         f"this is a {family(model)} model")
    freeze_base(model)
    s = arch_symbols(model.config)
    names = [name for name, _ in model.named_modules() if name.split(".")[-1] == config.target_modules]
    if not names:
        raise ValueError(f"no module named '{config.target_modules}' in this model")
    for name in names[len(names) - min(config.adapter_layers, len(names)):]:  # the topmost layers
        wrapped = AdaptedAttention(model.get_submodule(name), config.adapter_len, s["n_heads"], s["n_kv_heads"],
                                   s["d_model"])
        replace_module(model, name, wrapped)
    return model
