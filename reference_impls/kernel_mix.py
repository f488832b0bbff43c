"""Kernel-mix: kernel-wise (per attention head) low-rank adapters on W_q, W_v and W_o, mixed with shared ones.

Reading self-attention as kernel learning, each head is one kernel; Kernel-mix gives every head its own
low-rank update ("kernel-wise") and adds a LoRA shared by all heads ("mix"). In the authors' Kernel-mix
configuration (lora_head_base "XKA", github.com/ychen-stat-ml/kernel-adapters):

Equation:   head h of the query:   q_h += B^Q_h A^Q_h x + b^Q_h                 A^Q_h ∈ R^{r_q × d_model}, B^Q_h ∈ R^{d_head × r_q}
            q += B^Qs A^Qs x                                                     shared, rank r_q_share
            head h of the value is adapted from the same head's key ("K" base):
                   v_h += B^V_h A^V_h k_h + b^V_h,   k_h = W_k,h x (+ b_k,h)    A^V_h ∈ R^{r_v × d_head}, B^V_h ∈ R^{d_head × r_v}
            v += B^Vs A^Vs x                                                     shared, rank r_v_share
            output projection on the concatenated head outputs a = [a_1; ...; a_H] ("A" base):
                   o += B^O [A^O_1 a_1; ...; A^O_H a_H] + B^Os A^Os a + b^O       A^O_h ∈ R^{r_v × d_head}, B^O ∈ R^{d_model × H r_v}
            scaling 1 (the authors' low_rank_layer.py keeps scaling = 1 unless lora_alpha > 1.5, and the
            default is 1.0); on grouped-query attention the value heads pair with
            the key heads (n_kv_heads of them).
Trainable:  per layer (catalog: trainable_params.per_layer)
              n_heads r_q (d_model + d_head) + r_q_share (d_model + n_heads d_head) + n_heads d_head          [q]
            + n_kv_heads 2 r_v d_head + r_v_share (d_model + n_kv_heads d_head) + n_kv_heads d_head           [v]
            + n_heads r_v (d_head + d_model) + r_v_share (n_heads d_head + d_model) + d_model                [o]
Paper:      "Empowering parameter-efficient transfer learning by recognizing the kernel structure in
            self-attention", Yifan Chen et al., 2022 (Findings of NAACL 2022), arXiv 2205.03720.

Every update is linear in the layer input (k_h is W_k,h x + b_k,h), so Kernel-mix merges: W_q gets the
block rows B^Q_h A^Q_h, W_v the block rows B^V_h A^V_h W_k,h, W_o gets B^O blockdiag(A^O_h); the biases go
into the base bias (or, where the base has none, as LLaMA, stay as a constant added vector).
Init as the authors' "Houlsby" option: every tensor ~ truncated N(0, 0.01²), so the model does not start
exactly equal to the base model. Left out: the authors' dropout 0.1 on the adapter input. Targets are fixed
to the self-attention q, v, o of BERT/LLaMA-style models (separate q, k, v modules); GPT-2's fused c_attn
and T5 are not supported here.

Checked against: the authors' code github.com/ychen-stat-ml/kernel-adapters @d22e53f5 (nlg/configs/
kernel-mix.json: lora "QVO", lora_head true, lora_head_base "XKA", lora_Q_rank 3, lora_V_rank 8,
lora_Q_share_rank 12, lora_V_share_rank 8, lora_ini "Houlsby", lora_dropout 0.1; nlg/adapters/
low_rank_layer.py: per-head einsum updates and the scaling rule; adapter_modeling.py: the base of each
update chosen by the letters of lora_head_base). The paper's text was not re-read in this pass. peft has
no Kernel-mix. Numeric pins: test_kernel_mix.py re-computes the query (per-head plus shared plus bias),
value (from the same head's key) and output (block-wise) updates by hand, and the merged weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._core import AdditiveUpdate, arch_symbols, find_targets, freeze_base, linear_dims, linear_weight, replace_module


@dataclass
class KernelMixConfig:
    r_q: int = 3          # rank of each head's own query update (authors' NLG setting)
    r_v: int = 8          # rank of each head's own value and output updates
    r_q_share: int = 12   # rank of the query update shared by all heads
    r_v_share: int = 8    # rank of the shared value and output updates


def _trunc_normal(*shape: int) -> nn.Parameter:
    """The authors' "Houlsby" init: N(0, 0.01²) folded into ±2σ (torch.fmod(randn, 2) * 0.01)."""
    return nn.Parameter(torch.fmod(torch.randn(*shape), 2) * 0.01)


class KernelMixLinear(AdditiveUpdate):
    """Common part: a shared low-rank update B_s A_s on the layer input and a bias vector b."""

    def __init__(self, base: nn.Module, r_share: int) -> None:
        super().__init__()
        d_in, d_out = linear_dims(base)
        self.base = base
        self.A_s = _trunc_normal(r_share, d_in)   # (r_share, d_in)
        self.B_s = _trunc_normal(d_out, r_share)  # (d_out, r_share)
        self.b = _trunc_normal(d_out)             # (d_out,)
        self.merged = False

    def kernel_update(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d_in) -> (B, T, d_out)
        raise NotImplementedError

    def kernel_weight(self) -> torch.Tensor:  # the kernel-wise part as a (d_out, d_in) matrix
        raise NotImplementedError

    def bias_delta(self) -> torch.Tensor:  # (d_out,)
        return self.b

    def delta_weight(self) -> torch.Tensor:
        return self.kernel_weight() + self.B_s @ self.A_s  # (d_out, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)  # (B, T, d_out)
        if self.merged:
            return h if self.base.bias is not None else h + self.bias_delta()
        return h + self.kernel_update(x) + (x @ self.A_s.T) @ self.B_s.T + self.b

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            linear_weight(self.base).add_(self.delta_weight())
            if self.base.bias is not None:
                self.base.bias.add_(self.bias_delta())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            linear_weight(self.base).sub_(self.delta_weight())
            if self.base.bias is not None:
                self.base.bias.sub_(self.bias_delta())
            self.merged = False


class KernelMixQuery(KernelMixLinear):
    """q_h += B^Q_h A^Q_h x: every head has its own rank-r_q update of its d_head output rows."""

    def __init__(self, base: nn.Module, n_heads: int, d_head: int, r: int, r_share: int) -> None:
        super().__init__(base, r_share)
        d_in, _ = linear_dims(base)
        self.A = _trunc_normal(n_heads, r, d_in)    # (H, r_q, d_in)
        self.B = _trunc_normal(n_heads, d_head, r)  # (H, d_head, r_q)

    def kernel_update(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.einsum("btd,hrd->bthr", x, self.A)        # (B, T, H, r_q)
        return torch.einsum("bthr,hpr->bthp", z, self.B).flatten(-2)  # (B, T, H * d_head)

    def kernel_weight(self) -> torch.Tensor:
        return torch.einsum("hpr,hrd->hpd", self.B, self.A).flatten(0, 1)  # (H * d_head, d_in)


class KernelMixValue(KernelMixLinear):
    """v_h += B^V_h A^V_h k_h: each value head is adapted from its own key head (the "K" base)."""

    def __init__(self, base: nn.Module, key: nn.Module, n_kv_heads: int, d_head: int, r: int, r_share: int) -> None:
        super().__init__(base, r_share)
        self._key = (key,)  # the frozen k projection, held outside the module tree: it is the model's own
        self.A = _trunc_normal(n_kv_heads, r, d_head)  # (H_kv, r_v, d_head)
        self.B = _trunc_normal(n_kv_heads, d_head, r)  # (H_kv, d_head, r_v)

    @property
    def key(self) -> nn.Module:
        return self._key[0]

    def kernel_update(self, x: torch.Tensor) -> torch.Tensor:
        k = self.key(x).unflatten(-1, (self.A.shape[0], self.A.shape[2]))  # (B, T, H_kv, d_head)
        z = torch.einsum("bthd,hrd->bthr", k, self.A)                       # (B, T, H_kv, r_v)
        return torch.einsum("bthr,hpr->bthp", z, self.B).flatten(-2)         # (B, T, H_kv * d_head)

    def head_maps(self) -> torch.Tensor:
        return torch.einsum("hpr,hrd->hpd", self.B, self.A)  # B^V_h A^V_h: (H_kv, d_head, d_head)

    def kernel_weight(self) -> torch.Tensor:
        W_k = linear_weight(self.key).unflatten(0, (self.A.shape[0], self.A.shape[2]))  # (H_kv, d_head, d_in)
        return torch.einsum("hpq,hqd->hpd", self.head_maps(), W_k).flatten(0, 1)       # (H_kv * d_head, d_in)

    def bias_delta(self) -> torch.Tensor:
        if self.key.bias is None:
            return self.b
        b_k = self.key.bias.unflatten(0, (self.A.shape[0], self.A.shape[2]))  # (H_kv, d_head)
        return self.b + torch.einsum("hpq,hq->hp", self.head_maps(), b_k).flatten()


class KernelMixOutput(KernelMixLinear):
    """o += B^O [A^O_1 a_1; ...; A^O_H a_H]: head-wise down-projections, one shared up-projection."""

    def __init__(self, base: nn.Module, n_heads: int, d_head: int, r: int, r_share: int) -> None:
        super().__init__(base, r_share)
        _, d_out = linear_dims(base)
        self.A = _trunc_normal(n_heads, r, d_head)   # (H, r_v, d_head)
        self.B = _trunc_normal(d_out, n_heads * r)   # (d_out, H * r_v)

    def kernel_update(self, x: torch.Tensor) -> torch.Tensor:
        a = x.unflatten(-1, (self.A.shape[0], self.A.shape[2]))  # (B, T, H, d_head)
        z = torch.einsum("bthd,hrd->bthr", a, self.A).flatten(-2)  # (B, T, H * r_v)
        return z @ self.B.T                                       # (B, T, d_out)

    def kernel_weight(self) -> torch.Tensor:
        return self.B @ torch.block_diag(*self.A)  # (d_out, H * r_v) @ (H * r_v, H * d_head)


def apply(model: nn.Module, config: KernelMixConfig) -> nn.Module:
    freeze_base(model)
    sym = arch_symbols(model.config)
    H, H_kv, d_head = sym["n_heads"], sym["n_kv_heads"], sym["d_head"]
    q, k, v, o = (find_targets(model, [role]) for role in ("q", "k", "v", "o"))
    if not len(q) == len(k) == len(v) == len(o) or any(t.name == u.name for t, u in zip(q, k)):
        raise ValueError("Kernel-mix needs separate q, k, v and o projections in every layer (not GPT-2's fused c_attn)")
    for tq, tk, tv, to in zip(q, k, v, o):
        replace_module(model, tq.name, KernelMixQuery(tq.module, H, d_head, config.r_q, config.r_q_share))
        replace_module(model, tv.name, KernelMixValue(tv.module, tk.module, H_kv, d_head, config.r_v, config.r_v_share))
        replace_module(model, to.name, KernelMixOutput(to.module, H, d_head, config.r_v, config.r_v_share))
    return model
