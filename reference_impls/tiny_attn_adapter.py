"""Tiny-Attention adapter: a multi-head attention with a tiny per-head size, beside each self-attention.

Equation:   h ← h + TinyAttn(x),   x = the input of the self-attention sublayer, h = its output
            TinyAttn(x) = (1/H) Σ_m W_o^m softmax((x W_q^m)(x W_k^m)^T / sqrt(d')) (x W_v^m)
            W_q^m, W_k^m, W_v^m ∈ R^{d × d'}, W_o^m ∈ R^{d' × d}; H = adapter_heads, d' = adapter_head_dim
            (paper Sec. 2: an attention module with extremely small d', e.g. 1, in parallel to the
            pretrained attention; its heads are a mixture of experts whose outputs are averaged).
Trainable:  4 * d_model * adapter_heads * adapter_head_dim + 3 * adapter_heads * adapter_head_dim + d_model
            per layer (q, k, v with biases; the output projections and one shared output bias)
            (catalog: per_layer)
Paper:      "Tiny-Attention Adapter: Contexts Are More Important Than the Number of Parameters",
            Hongyu Zhao, Hao Tan and Hongyuan Mei, 2022 (EMNLP 2022), arXiv 2211.01979.

Deployment (paper): the heads are experts, so their weights can be averaged into one head
(`average_heads`), which divides the adapter's inference cost by H. This is exact when the heads agree
and an approximation otherwise (attention is not linear in its weights), as in the paper.
The adapter reads x through a forward pre-hook on the query projection (on GPT-2 the fused c_attn) and
adds to the output of the attention output projection, so it sits inside the sublayer's residual
connection (before BERT's post-attention layer norm). W_o starts at zero, so the model starts equal to
the base model. Decoder-only models (LLaMA, GPT-2) get a causal mask; the padding mask of the model's
`attention_mask` argument is applied too (caught by a forward pre-hook on the model).
Not checked against the paper: the number of heads, the biases and the exact insertion point (Fig. 3
shows a parallel structure); the defaults below (4 heads of size 1) are this file's choice.
Not mergeable: softmax attention cannot be folded into a weight.
Checked against: the paper's abstract (arXiv 2211.01979: attention with extremely small per-head
dimensionality as an adapter, heads viewed as a mixture of experts whose weights are averaged for
deployment); the Sec. 2 details above are as recorded when this file was written and were not re-read in
this pass; no authors' repository was found among the public code searched, and peft has no such tuner.
The tests pin the adapter against a hand-computed attention (with padding) and the head averaging.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import (Wrapper, family, find_targets, freeze_base, linear_dims, replace_module)

CAUSAL = {"llama", "gpt2"}


@dataclass
class TinyAttnAdapterConfig:
    adapter_heads: int = 4     # H, the number of tiny heads (experts)
    adapter_head_dim: int = 1  # d', the per-head size ("extremely small")


class TinyAttention(nn.Module):
    """(1/H) Σ_m W_o^m Attn_m(x): H heads of size d', averaged."""

    def __init__(self, d: int, H: int, dh: int, causal: bool) -> None:
        super().__init__()
        self.H, self.dh, self.causal = H, dh, causal
        self.qkv = nn.Linear(d, 3 * H * dh)  # W_q, W_k, W_v of all heads: (3 H d', d), nn.Linear's init
        # zero init: W_o = 0 and its bias 0, so the adapter adds nothing at the start
        self.W_o = nn.Parameter(torch.zeros(H, dh, d))  # (H, d', d), one output projection per head
        self.b_o = nn.Parameter(torch.zeros(d))         # (d,)
        self.mask: torch.Tensor | None = None  # (B, T) padding mask of the current forward, 1 = keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d)
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.H, self.dh).permute(2, 0, 3, 1, 4)  # each (B, H, T, d')
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.dh)  # (B, H, T, T)
        if self.causal:
            future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        if self.mask is not None and self.mask.shape == (B, T):
            scores = scores.masked_fill(self.mask[:, None, None, :] == 0, float("-inf"))
        z = scores.softmax(-1) @ v  # (B, H, T, d')
        out = torch.einsum("bhtk,hkd->btd", z, self.W_o) / self.H  # mean over heads: (B, T, d)
        return out + self.b_o


class TinyAttnAdapter(Wrapper):
    """Wraps the attention output projection: h = base(z) + TinyAttn(x), x = the sublayer's input."""

    def __init__(self, base: nn.Module, d: int, H: int, dh: int, causal: bool) -> None:
        super().__init__()
        self.base = base
        self.adapter = TinyAttention(d, H, dh, causal)
        self.x: torch.Tensor | None = None  # set by catch_input on every forward

    def catch_input(self, q: nn.Module, args: tuple) -> None:
        """Forward pre-hook on the query projection, whose input is the attention sublayer's input."""
        self.x = args[0]  # (B, T, d)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # z: (B, T, d), the heads before W_O
        x, self.x = self.x, None  # do not keep activations alive between calls
        return self.base(z) + self.adapter(x)


@torch.no_grad()
def average_heads(model: nn.Module) -> nn.Module:
    """Deployment: replace every adapter's H heads by one head with the mean weights (paper Sec. 2.2)."""
    for m in model.modules():
        if isinstance(m, TinyAttention) and m.H > 1:
            d = m.W_o.shape[-1]
            Wqkv = m.qkv.weight.view(3, m.H, m.dh, d).mean(1).reshape(3 * m.dh, d)  # (3 d', d)
            bqkv = m.qkv.bias.view(3, m.H, m.dh).mean(1).reshape(3 * m.dh)         # (3 d',)
            W_o = m.W_o.mean(0, keepdim=True)                                      # (1, d', d)
            m.qkv = nn.Linear(d, 3 * m.dh).to(Wqkv)
            m.qkv.weight.copy_(Wqkv)
            m.qkv.bias.copy_(bqkv)
            m.W_o = nn.Parameter(W_o, requires_grad=m.b_o.requires_grad)
            m.qkv.requires_grad_(m.b_o.requires_grad)
            m.H = 1
    return model


def apply(model: nn.Module, config: TinyAttnAdapterConfig) -> nn.Module:
    freeze_base(model)
    causal = family(model) in CAUSAL
    qs, os_ = find_targets(model, ["q"]), find_targets(model, ["o"])
    assert len(qs) == len(os_), "expected one query and one output projection per self-attention"
    adapters = []
    for q, o in zip(qs, os_):
        d = linear_dims(o.module)[1]
        a = TinyAttnAdapter(o.module, d, config.adapter_heads, config.adapter_head_dim, causal)
        q.module.register_forward_pre_hook(a.catch_input)
        replace_module(model, o.name, a)
        adapters.append(a.adapter)

    def catch_mask(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        for a in adapters:
            a.mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    model.register_forward_pre_hook(catch_mask, with_kwargs=True)
    return model
