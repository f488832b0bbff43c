"""MiSS: Matrix Shard Sharing (formerly Bone, DiSHA).

Equation:   h = W0 x + D_fullᵀ Σ_j x_j,   x = (x_1, ..., x_{⌈d_in / r⌉}) cut into shards of r features
            (the last one zero-padded),   D ∈ R^{r × d_out}
            equivalently ΔW = [Dᵀ Dᵀ ... Dᵀ] ∈ R^{d_out × d_in}: one shard matrix Dᵀ tiled along the input
Trainable:  r * d_out per targeted module      (catalog: trainable_params.per_target)
Paper:      "MiSS: Revisiting the Trade-off in LoRA with an Efficient Shard-Sharing Structure", Jiale Kang et al.,
            2026 (ICLR 2026), arXiv 2409.15371 (v1, 2024, titled "Bone").

One zero-initialised matrix D replaces LoRA's pair B A: there is no down-projection, the input's shards
are summed (d_in / r additions) and the sum goes through D. D = 0 makes ΔW = 0, so the adapted model
starts equal to the base model, and ΔW is linear in D, so it merges into W0.

Variants, as in peft (`init`):
  balance  the form above (peft's init_weights=True, the default).
  mini     D ∈ R^{r × mini_r}, repeated d_out / mini_r times along the output: r * mini_r parameters.
  bat      Block-Affine: W0 is cut into r × r blocks W_ij and D into d_out / r blocks D_i ∈ R^{r × r};
           W_ij ↦ W_ij + W_ij D_i + D_i, so the update depends on W0 (still r * d_out parameters, still
           mergeable; unmerging solves W_ij = (W'_ij − D_i)(I + D_i)^{-1}).

Checked against: the paper's method section (shards of W sharing one trainable matrix, zero init, the
Block-Affine form of its first version, Bone); peft 0.21.2 `peft/tuners/miss/layer.py` (MissLinear.forward:
padding, sum over shards, @ miss_block; get_delta_weight for bat; get_delta_weight_miss for balance and
mini); the oracle tests compare outputs, gradients and merged weights with peft's MissModel for all three.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import AdditiveUpdate, freeze_base, linear_dims, linear_weight, replace_modules


@dataclass
class MiSSConfig:
    r: int = 64                                   # shard size along the input (rows of D)
    dropout: float = 0.0                          # dropout on the input of the MiSS branch (balance, mini)
    init: str = "balance"                         # balance | bat | mini
    mini_r: int = 1                               # columns of D in the mini variant
    target_modules: tuple[str, ...] = ("q", "v")  # roles or module-name suffixes


class MiSSLinear(AdditiveUpdate):
    def __init__(self, base: nn.Module, name: str, r: int, dropout: float = 0.0, init: str = "balance",
                 mini_r: int = 1) -> None:
        super().__init__()
        d_in, d_out = linear_dims(base)
        if not 1 <= r <= d_in:
            raise ValueError(f"MiSS: r={r} must lie in 1..d_in = {d_in} of {name}")
        self.base, self.r, self.init, self.mini_r = base, r, init, mini_r
        self.d_in, self.d_out = d_in, d_out
        # zero init in every variant: ΔW = 0, so the wrapped layer starts identical to the base layer
        if init == "balance":
            shape = (r, d_out)
        elif init == "mini":
            if d_out % mini_r:
                raise ValueError(f"MiSS mini: mini_r={mini_r} does not divide d_out = {d_out} of {name}")
            shape = (r, mini_r)
        elif init == "bat":
            if d_in % r or d_out % r:
                raise ValueError(f"MiSS bat: r={r} must divide d_in = {d_in} and d_out = {d_out} of {name}")
            shape = (d_out // r, r, r)
        else:
            raise ValueError(f"MiSS: unknown init '{init}'; choose balance, bat or mini")
        self.D = nn.Parameter(torch.zeros(shape))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def shared(self) -> torch.Tensor:
        """The shard matrix D of balance and mini, as (r, d_out)."""
        return self.D.repeat(1, self.d_out // self.mini_r) if self.init == "mini" else self.D

    def delta_weight(self, W: torch.Tensor | None = None) -> torch.Tensor:  # (d_out, d_in)
        if self.init == "bat":
            W = linear_weight(self.base) if W is None else W
            r = self.r
            blocks = W.reshape(self.d_out // r, r, self.d_in // r, r).transpose(1, 2)  # W_ij: (d_out/r, d_in/r, r, r)
            D = self.D[:, None]                                                        # D_i: (d_out/r, 1, r, r)
            return (blocks @ D + D).transpose(1, 2).reshape(self.d_out, self.d_in)     # W_ij D_i + D_i
        n = -(-self.d_in // self.r)  # shards, the last one possibly partial
        return self.shared().T.repeat(1, n)[:, : self.d_in]  # [Dᵀ Dᵀ ... Dᵀ]: (d_out, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        if self.merged:
            return self.base(x)
        if self.init == "bat":  # the update depends on W0: apply the updated weight
            W = linear_weight(self.base)
            return F.linear(x, W + self.delta_weight(W), self.base.bias)
        h = self.base(x)  # (B, T, d_out)
        x = self.dropout(x)
        x = F.pad(x, (0, -self.d_in % self.r))                            # (B, T, n r), zeros complete the last shard
        s = x.reshape(*x.shape[:-1], -1, self.r).sum(dim=-2)              # Σ_j x_j: (B, T, r)
        return h + s @ self.shared()                                      # (B, T, d_out)

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged and self.init == "bat":  # W' = W + W D + D, so W = (W' − D)(I + D)^{-1} block by block
            W, r = linear_weight(self.base), self.r
            blocks = W.reshape(self.d_out // r, r, self.d_in // r, r).transpose(1, 2)
            D = self.D[:, None]
            inv = torch.linalg.inv(torch.eye(r, dtype=D.dtype, device=D.device) + D)
            W.copy_(((blocks - D) @ inv).transpose(1, 2).reshape(self.d_out, self.d_in))
            self.merged = False
        else:
            super().unmerge()


def apply(model: nn.Module, config: MiSSConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules,
                    lambda t: MiSSLinear(t.module, t.name, config.r, config.dropout, config.init, config.mini_r))
    return model
