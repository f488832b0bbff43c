"""Tied-LoRA: LoRA with one pair of low-rank factors tied across all layers.

Equation:   h = W0 x + s · Λ_v,l B Λ_u,l A x,   s = alpha / r,   Λ_u,l = diag(u_l), Λ_v,l = diag(v_l)
            A ∈ R^{r × d_model}, B ∈ R^{d_qkv × r}: ONE trainable pair for the whole model (weight tying);
            u_l ∈ R^r, v_l ∈ R^{d_qkv}: trainable, one pair per attention block l.
            d_qkv = (n_heads + 2 n_kv_heads) d_head is the output of the fused query-key-value projection.
Trainable:  r (d_model + d_qkv) once + n_layers (r + d_qkv)
            (catalog: total = r * (d_model + n_heads * d_head + 2 * n_kv_heads * d_head),
                      per_layer = r + n_heads * d_head + 2 * n_kv_heads * d_head)
Paper:      "Tied-LoRA: Enhancing parameter efficiency of LoRA with Weight Tying", Adithya Renduchintala,
            Tugrul Konuk, Oleksii Kuchaiev, NAACL 2024, arXiv 2311.09578.

The paper adapts the fused QKV projection of its NeMo models. Where q, k and v are separate modules
(BERT, T5, LLaMA) they are treated as the row blocks of that fused projection, in the order q, k, v:
the module for role q of block l uses ΔW = s · diag(v_l[rows_q]) B[rows_q] diag(u_l) A, so A, u_l and
the row layout are exactly those of one fused projection; on GPT-2 the fused c_attn is one module.

Initialisation: A Kaiming-uniform (LoRA's), B = 0, u = v = 1. B = 0 makes every ΔW_l zero, so the
adapted model starts equal to the base model. Each ΔW_l is a fixed matrix once trained, so it merges
into W0.

Checked against: the paper's abstract and framing (arXiv 2311.09578: tied low-rank factors plus
per-layer scaling vectors, selective training of A, B, u, v); this file implements the configuration
in which all four are trained. The trainable count matches a public third-party calculator of the
Tied-LoRA count for QKV adaptation (4 d r + L (r + 3 d), i.e. the formula above with n_kv_heads =
n_heads). NOT checked (the method section was not reachable with the search tool): the paper's
initial values of u and v, whether the paper applies the alpha / r factor, and which of its named
configurations this is; u = v = 1 and s = alpha / r (1 with the defaults) are peftkb's choices. There
is no Tied-LoRA tuner in peft 0.21.2 and the authors' NeMo code was not compared.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import AdditiveUpdate, find_targets, freeze_base, kaiming_uniform_, linear_dims, \
    replace_module


@dataclass
class TiedLoRAConfig:
    r: int = 8                                          # rank of the tied factors A and B
    alpha: float = 8.0                                  # s = alpha / r
    target_modules: tuple[str, ...] = ("q", "k", "v")   # the (fused) query-key-value projection


class TiedFactors(nn.Module):
    """The single A (r, d_model) and B (d_qkv, r) that every adapted block uses."""

    def __init__(self, d_in: int, d_qkv: int, r: int) -> None:
        super().__init__()
        self.A = nn.Parameter(kaiming_uniform_(torch.empty(r, d_in)))  # (r, d_model)
        self.B = nn.Parameter(torch.zeros(d_qkv, r))                    # (d_qkv, r), zero: ΔW = 0 at init


class BlockScales(nn.Module):
    """The per-block vectors: u (r,) scales the low-rank code, v (d_qkv,) scales the fused output."""

    def __init__(self, d_qkv: int, r: int) -> None:
        super().__init__()
        self.u = nn.Parameter(torch.ones(r))
        self.v = nn.Parameter(torch.ones(d_qkv))


class TiedLoRALinear(AdditiveUpdate):
    """One projection of a block: the rows `rows` of the block's fused update s Λ_v B Λ_u A."""

    def __init__(self, base: nn.Module, factors: TiedFactors, scales: BlockScales, rows: slice,
                 scaling: float) -> None:
        super().__init__()
        self.base = base
        self.factors = factors  # shared by every wrapper of the model (the same module object)
        self.scales = scales    # shared by the wrappers of one attention block
        self.rows = rows
        self.scaling = scaling
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        B = self.factors.B[self.rows]                  # (d_out, r)
        v = self.scales.v[self.rows]                   # (d_out,)
        u_A = self.scales.u[:, None] * self.factors.A  # Λ_u A: (r, d_in)
        return self.scaling * (v[:, None] * B) @ u_A   # (d_out, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, T, d_in)
        h = self.base(x)  # (batch, T, d_out)
        if self.merged:
            return h
        z = self.scales.u * F.linear(x, self.factors.A)  # Λ_u A x: (batch, T, r)
        return h + self.scaling * self.scales.v[self.rows] * F.linear(z, self.factors.B[self.rows])


def apply(model: nn.Module, config: TiedLoRAConfig) -> nn.Module:
    if config.r < 1:
        raise ValueError(f"tied-lora: r must be at least 1, got {config.r}")
    freeze_base(model)
    targets = find_targets(model, config.target_modules)
    blocks: dict[str, list] = {}  # attention block name -> its targets, in model order (q, k, v)
    for t in targets:
        blocks.setdefault(t.name.rpartition(".")[0], []).append(t)
    layouts = {tuple(linear_dims(t.module) for t in ts) for ts in blocks.values()}
    if len(layouts) != 1 or len({d_in for layout in layouts for d_in, _ in layout}) != 1:
        raise ValueError(f"tied-lora: the targeted projections differ in shape between blocks ({sorted(layouts)}); "
                         "one tied A and B needs the same fused layout in every block")
    layout = layouts.pop()
    d_in, d_qkv = layout[0][0], sum(d_out for _, d_out in layout)
    factors = TiedFactors(d_in, d_qkv, config.r)
    for ts in blocks.values():
        scales, start = BlockScales(d_qkv, config.r), 0
        for t in ts:
            d_out = linear_dims(t.module)[1]
            replace_module(model, t.name, TiedLoRALinear(t.module, factors, scales, slice(start, start + d_out),
                                                         config.alpha / config.r))
            start += d_out
    return model
