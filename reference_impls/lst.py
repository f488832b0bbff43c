"""LST (Ladder Side-Tuning): a narrow side network reads the frozen backbone through ladders and predicts.

Equation:   backbone (frozen, run without autograd):  h_0 = embeddings, h_i = block_i(h_{i-1}), i = 1..L
            ladders:  x_i = W_i h_i + b_i,   W_i ∈ R^{d_s × d}, d_s = d_model // reduction_factor
            side:     s_0 = x_0;  s_i = f_i( μ_i s_{i-1} + (1 - μ_i) x_i ),  μ_i = sigmoid(α_i / T), T = 0.1
            output:   y = h_L + W_up LN(s_L) + b_up  ∈ R^d, fed to the (frozen) output head in place of h_L
            f_i: a transformer block of width d_s (pre-LN, n_heads heads, FFN width d_ff // reduction_factor,
            GELU, causal for decoder-only backbones).
Trainable:  per layer  d_model * d_s + d_s + 1 + 4 * (d_s * d_s + d_s) + 2 * d_s * d_f + d_f + d_s + 4 * d_s
            total      d_model * d_s + d_s + 2 * d_s + d_s * d_model + d_model
            with d_s = d_model // reduction_factor, d_f = d_ff // reduction_factor   (catalog: per_layer + total)
Paper:      "LST: Ladder Side-Tuning for Parameter and Memory Efficient Transfer Learning", Yi-Lin Sung et al.,
            2022 (NeurIPS 2022), arXiv 2206.06522.

Memory: the backbone runs under torch.no_grad(), so none of its activations is kept for backward and no
gradient reaches it; back-propagation runs through the side network, the ladders and the frozen head.
Gates: α_i = 0 at init (μ_i = 1/2), T = 0.1, as in the paper.
Deviations / left out: the paper initialises the side network from a structurally pruned copy of the
backbone (and optionally drops side layers); here the side blocks are randomly initialised (nn.Linear's
init), since our side block is a generic pre-LN block rather than a pruned copy of each family's block.
The paper's T5 side network has an encoder and a decoder side network with cross-attention; encoder-decoder
backbones are not supported here (BERT and decoder-only models are). The paper trains its own output
head; here the model's frozen LM head reads y. The upsampled side output is added to the backbone's
final hidden state (a peftkb choice: the side network here starts random rather than pruned from the
backbone, and h_L keeps the frozen head's input meaningful from the first step); the authors' code feeds
the head the upsampled side output alone (or, with merge_last, a gated mix with the backbone's output).
W_up keeps nn.Linear's init (no zero init), so the model does not start equal to the base model.
Not mergeable.

Checked against: the authors' code github.com/ylsung/Ladder-Side-Tuning @1798e82e,
seq2seq/third_party/models/t5/modeling_side_t5.py and VL-T5/src/my_transformers/modeling_t5.py: the first
side input is side_first_downsample(embeddings); per layer, gate = sigmoid(side_gate_param / gate_T),
side = gate * side + (1 - gate) * side_downsample(backbone layer output), then the side block
(add_residual_after = False); gate_alpha = 0 and gate_T = 0.1 (side_transformers/config.py); a final
side layer norm, then side_final_upsample. The gate convention here follows that code (μ weighs the side
stream). The paper's abstract and Figure 3's caption (§3.2) were read; the method text itself was not.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from reference_impls._core import Wrapper, arch_symbols, family, freeze_base, replace_module


@dataclass
class LstConfig:
    reduction_factor: int = 8       # side widths are the backbone's divided by this (d_s = d_model // r)
    gate_temperature: float = 0.1   # T in μ_i = sigmoid(α_i / T)


class SideBlock(nn.Module):
    """A pre-LN transformer block of width d_s: s + MHA(LN(s)), then + FFN(LN(.))."""

    def __init__(self, d_s: int, d_f: int, n_heads: int, causal: bool) -> None:
        super().__init__()
        self.n_heads, self.causal = n_heads, causal
        self.ln1, self.ln2 = nn.LayerNorm(d_s), nn.LayerNorm(d_s)
        self.qkv = nn.Linear(d_s, 3 * d_s)   # W_q | W_k | W_v: (3 d_s, d_s)
        self.o = nn.Linear(d_s, d_s)
        self.fc1, self.fc2 = nn.Linear(d_s, d_f), nn.Linear(d_f, d_s)

    def forward(self, s: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:  # s: (B, T, d_s); key_mask (B, T)
        B, T, d = s.shape
        q, k, v = self.qkv(self.ln1(s)).view(B, T, 3, self.n_heads, d // self.n_heads).unbind(dim=2)  # (B, T, nh, hs)
        allowed = key_mask[:, None, None, :].bool()                                   # (B, 1, 1, T)
        if self.causal:
            allowed = allowed & torch.ones(T, T, dtype=torch.bool, device=s.device).tril()  # (B, 1, T, T)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           attn_mask=allowed)                         # (B, nh, T, hs)
        s = s + self.o(a.transpose(1, 2).reshape(B, T, d))                            # (B, T, d_s)
        return s + self.fc2(F.gelu(self.fc1(self.ln2(s))))


class LadderSideNetwork(Wrapper):
    """Wraps the backbone (HF base model): runs it without autograd and returns h_L plus the upsampled
    side output as the last hidden state."""

    def __init__(self, base: nn.Module, config: LstConfig, sym: dict[str, int], causal: bool) -> None:
        super().__init__()
        self.base = base
        d, L = sym["d_model"], sym["n_layers"]
        d_s, d_f = d // config.reduction_factor, sym["d_ff"] // config.reduction_factor
        if d_s % sym["n_heads"]:
            raise ValueError(f"side width {d_s} must be a multiple of n_heads {sym['n_heads']}")
        self.T = config.gate_temperature
        self.ladders = nn.ModuleList(nn.Linear(d, d_s) for _ in range(L + 1))  # W_0..W_L: (d_s, d)
        # α = 0: μ = 1/2, the side path and the ladder weigh the same at the start (the authors' gate_alpha)
        self.alpha = nn.Parameter(torch.zeros(L))                                # (L,)
        self.side = nn.ModuleList(SideBlock(d_s, d_f, sym["n_heads"], causal) for _ in range(L))
        self.ln_out = nn.LayerNorm(d_s)
        self.up = nn.Linear(d_s, d)  # W_up: (d, d_s)

    def gates(self) -> torch.Tensor:
        return torch.sigmoid(self.alpha / self.T)  # (L,): μ_i

    def forward(self, *args, **kwargs):
        wanted_hidden = kwargs.pop("output_hidden_states", False)
        with torch.no_grad():  # no backprop through the backbone: its activations are not stored
            out = self.base(*args, output_hidden_states=True, **kwargs)
        h = out.hidden_states                                     # L+1 tensors (B, T, d): h_0..h_L
        mask = kwargs.get("attention_mask")
        mask = mask if mask is not None else torch.ones(h[0].shape[:2], device=h[0].device)  # (B, T)
        mu = self.gates()
        s = self.ladders[0](h[0])                                 # (B, T, d_s): s_0 = x_0
        for i, block in enumerate(self.side, start=1):
            x = self.ladders[i](h[i])                             # (B, T, d_s)
            s = block(mu[i - 1] * s + (1 - mu[i - 1]) * x, mask)  # the authors' gate: μ on the side
        out.last_hidden_state = out.last_hidden_state + self.up(self.ln_out(s))  # (B, T, d): h_L + W_up LN(s_L)
        if not wanted_hidden:
            out.hidden_states = None
        return out


def side_network(model: nn.Module) -> LadderSideNetwork:
    return getattr(model, model.base_model_prefix)


def apply(model: nn.Module, config: LstConfig) -> nn.Module:
    fam = family(model)
    if fam == "t5":
        raise ValueError("LST on encoder-decoder models (side encoder and decoder) is not implemented here")
    freeze_base(model)
    side = LadderSideNetwork(getattr(model, model.base_model_prefix), config, arch_symbols(model.config),
                             causal=fam != "bert")
    replace_module(model, model.base_model_prefix, side)
    return model
