"""DeFT: Decompositional Efficient Fine-Tuning (remove a learned subspace from W0, inject a new one).

Equation:   W' = (I − P_proj) W0 + Q s R,   P_proj = Q Nᵀ,   P ∈ R^{d_out × r},  R ∈ R^{r × d_in} trainable
            relu: Q = P, N = relu(P) (a non-orthogonal projection);  qr: Q = N = the Q of P's QR (orthogonal)
            s = alpha / r, or 1 without alpha;  PaRa mode: W' = (I − P_proj) W0 (no R)
Trainable:  r * (d_in + d_out) per targeted module      (catalog: trainable_params.per_target; PaRa: r * d_out)
Paper:      "DEFT: Decompositional Efficient Fine-Tuning for Text-to-Image Models", Komal Kumar et al., 2025
            (NeurIPS 2025), arXiv 2509.22793.

P spans an r-dimensional subspace of the output space: the projection P_proj takes W0's component in it
out, and Q s R puts a learned rank-r replacement back in, so the update changes both the pretrained
weight's content in that subspace and adds new content. In the forward pass the projection acts on W0 x,
so the d_out × d_out matrix is never formed.

Initialisation (peft's): P ~ N(0, 0.02²), and R = Nᵀ W0 / s, so that Q s R = P_proj W0 and W' = W0: the
model starts unchanged (not in PaRa mode, which removes the subspace from the start). The update is a plain
matrix and merges; unmerging uses Nᵀ W0 kept at merge time, since the delta depends on W0.

Checked against: the paper (subspace removal (I − P_proj) W0 plus low-rank injection, PaRa as the special case
without injection); peft 0.21.2 `peft/tuners/deft/layer.py` (the relu and qr projections, R's init,
scaling alpha / r or 1, r capped at d_out, forward on the activations, merge with the cached Nᵀ W0).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import Wrapper, freeze_base, linear_dims, linear_weight, replace_modules


@dataclass
class DeFTConfig:
    r: int = 8                         # rank of the removed subspace and of the injection
    decomposition: str = "relu"        # relu: P relu(P)ᵀ; qr: orthogonal projector from a QR of P
    alpha: float | None = None         # the injection is scaled by alpha / r; None: no scaling
    para: bool = False                 # PaRa mode: only remove the subspace, no injection
    target_modules: tuple[str, ...] = ("q", "v")


class DeFTLinear(Wrapper):
    def __init__(self, base: nn.Module, r: int, decomposition: str = "relu", alpha: float | None = None,
                 para: bool = False) -> None:
        super().__init__()
        if decomposition not in ("relu", "qr"):
            raise ValueError(f"decomposition must be relu or qr, got '{decomposition}'")
        d_in, d_out = linear_dims(base)
        r = min(r, d_out)  # a subspace of the output space has at most d_out dimensions
        self.base, self.decomposition, self.para = base, decomposition, para
        self.scaling = alpha / r if alpha else 1.0
        self.P = nn.Parameter(torch.randn(d_out, r) * 0.02)  # (d_out, r)
        if not para:
            with torch.no_grad():  # R = Nᵀ W0 / s: the injection puts back exactly what the projection removes
                _, N = self.project()
                self.R = nn.Parameter(N.T @ linear_weight(base) / self.scaling)  # (r, d_in)
        self.merged = False
        self._NtW0: torch.Tensor | None = None

    def project(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, N) with P_proj = Q Nᵀ."""
        if self.decomposition == "relu":
            return self.P, torch.relu(self.P)
        Q, _ = torch.linalg.qr(self.P)  # (d_out, r), orthonormal columns
        return Q, Q

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        if self.merged:
            return self.base(x)
        Q, N = self.project()
        Wx = F.linear(x, linear_weight(self.base))  # W0 x: (B, T, d_out)
        h = self.base(x) - (Wx @ N) @ Q.T  # remove: − Q Nᵀ W0 x
        if not self.para:
            h = h + F.linear(x, self.scaling * self.R) @ Q.T  # inject: + Q s R x
        return h

    def _delta(self, NtW0: torch.Tensor) -> torch.Tensor:  # (d_out, d_in), given Nᵀ W0 (r, d_in)
        Q, _ = self.project()
        return -(Q @ NtW0) if self.para else Q @ (self.scaling * self.R - NtW0)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            W = linear_weight(self.base)
            self._NtW0 = self.project()[1].T @ W
            W.add_(self._delta(self._NtW0))  # (I − P_proj) W0 + Q s R
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            linear_weight(self.base).sub_(self._delta(self._NtW0))
            self._NtW0, self.merged = None, False


def apply(model: nn.Module, config: DeFTConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules, lambda t: DeFTLinear(
        t.module, config.r, config.decomposition, config.alpha, config.para))
    return model
