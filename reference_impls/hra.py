"""HRA: Householder Reflection Adaptation.

Equation:   h = W0 H x + b,   H = Π_{i=1..r} (I − 2 u_i u_iᵀ / ||u_i||²),   u_i ∈ R^{d_in}
            with apply_gs: H = I − 2 Q Qᵀ, Q = Gram-Schmidt(u_1, ..., u_r)  (orthonormal columns)
Trainable:  r * d_in per targeted module      (catalog: trainable_params.per_target)
Paper:      "Bridging The Gap between Low-rank and Orthogonal Adaptation via Householder Reflection
            Adaptation", Shen Yuan et al., 2024 (NeurIPS 2024), arXiv 2405.17484.

H is orthogonal (a product of reflections), so W0 H keeps the pairwise angles between the rows of W0, as
in orthogonal fine-tuning; and H − I has rank at most r, so W0 H = W0 + W0 (H − I) is at the same time an
adaptive rank-r update (the paper's bridge between OFT and LoRA). Since W0 H x = W0 (H x), the forward pass
reflects the input and calls the frozen layer on it, never forming the d_in × d_in matrix.

Initialisation (peft's, for even r): the vectors come in identical pairs, u_{2j} = u_{2j+1}, and a
reflection applied twice is the identity, so H = I and the model starts unchanged. With an odd r, or with
apply_gs (where Gram-Schmidt of a repeated vector divides by zero; peft then returns NaN), the vectors are
drawn independently (Kaiming-uniform) and the model does not start unchanged. Merging writes W0 H into the
base weight; H⁻¹ = Hᵀ undoes it.

Checked against: the paper (the chain of r reflections, and its Gram-Schmidt orthogonalised variant);
peft 0.21.2 `peft/tuners/hra/layer.py` (hra_u = [u_1 ... u_r] as a d_in × r matrix, the paired init,
H = R_1 R_2 ... R_r multiplied onto W from the right). Unlike peft (nn.Linear only), this also wraps GPT-2's
Conv1D.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._core import Wrapper, freeze_base, kaiming_uniform_, linear_dims, linear_weight, replace_modules


@dataclass
class HRAConfig:
    r: int = 8                  # number of Householder reflections
    apply_gs: bool = False      # orthogonalise the reflection vectors (Gram-Schmidt)
    target_modules: tuple[str, ...] = ("q", "v")


class HRALinear(Wrapper):
    def __init__(self, base: nn.Module, r: int, apply_gs: bool = False) -> None:
        super().__init__()
        d_in, _ = linear_dims(base)
        self.base, self.r, self.apply_gs = base, r, apply_gs
        if r % 2 == 0 and not apply_gs:
            half = kaiming_uniform_(torch.empty(d_in, r // 2))   # (d_in, r/2)
            U = torch.repeat_interleave(half, 2, dim=1)          # (d_in, r): columns u_1 = u_2, u_3 = u_4, ...
        else:
            U = kaiming_uniform_(torch.empty(d_in, r))
        self.U = nn.Parameter(U)  # (d_in, r), column i is u_i
        self.merged = False

    def unit_vectors(self) -> torch.Tensor:
        """The reflection directions as unit columns: u_i / ||u_i||, or Gram-Schmidt of U with apply_gs."""
        if not self.apply_gs:
            return self.U / self.U.norm(dim=0)  # (d_in, r)
        q = []
        for i in range(self.r):
            v = self.U[:, i]
            for prev in q:
                v = v - (prev @ v) * prev  # remove the components along the earlier directions
            q.append(v / v.norm())
        return torch.stack(q, dim=1)  # (d_in, r), orthonormal columns

    def reflect(self, x: torch.Tensor) -> torch.Tensor:
        """H x for every row x (..., d_in): apply R_r first, R_1 last."""
        Q = self.unit_vectors()
        if self.apply_gs:
            return x - 2 * (x @ Q) @ Q.T  # (I − 2 Q Qᵀ) x
        for i in reversed(range(self.r)):
            q = Q[:, i]
            x = x - 2 * (x @ q)[..., None] * q  # (I − 2 q qᵀ) x
        return x

    def H(self) -> torch.Tensor:  # (d_in, d_in)
        d_in = self.U.shape[0]
        return self.reflect(torch.eye(d_in, dtype=self.U.dtype, device=self.U.device)).T  # rows of I are eᵢᵀ: (H eᵢ)ᵀ

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        return self.base(x if self.merged else self.reflect(x))  # W0 (H x) + b

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            W = linear_weight(self.base)
            W.copy_(W @ self.H())  # W0 H
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            W = linear_weight(self.base)
            W.copy_(W @ self.H().T)  # H orthogonal: (W0 H) Hᵀ = W0
            self.merged = False


def apply(model: nn.Module, config: HRAConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules, lambda t: HRALinear(t.module, config.r, config.apply_gs))
    return model
