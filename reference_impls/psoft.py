"""PSOFT: orthogonal fine-tuning within the principal subspace of each weight.

Equation:   W0 = U S Vᵀ (SVD),  A = V_rᵀ ∈ R^{r × d_in} (orthonormal rows),  B = U_r S_r / s ∈ R^{d_out × r},
            s = alpha / r;   A and B frozen
            R = diag(b) Cayley(Q) diag(a),  Cayley(Q) = (I + Q)(I − Q)^{-1},  Q = −Qᵀ ∈ R^{r × r} trained,
            a, b ∈ R^r trained scaling vectors
            h = W0 x + s B (R − I) A dropout(x)
Trainable:  r * (r - 1) / 2 + 2 * r per targeted module      (catalog: trainable_params.per_target)
Paper:      "Efficient Orthogonal Fine-Tuning with Principal Subspace Adaptation", Fei Wu et al., 2026 (ICLR 2026),
            arXiv 2505.11235.

s B A = U_r S_r V_rᵀ is W0's principal part, and s B R A rotates it inside its own r-dimensional
subspace, as OFT (oft.py) rotates a whole weight, at LoRA-like cost: only the r(r − 1)/2 free entries of
the skew-symmetric Q and the two vectors train (`scaling_vectors` relaxes the strict orthogonality).
With orthogonal=False, R is a free r × r matrix instead (r² parameters, starting at I). Q = 0 and
a = b = 1 give R = I, so ΔW = 0 and the adapted model starts equal to the base model; ΔW merges into W0.
The SVD is the full one (peft's default psoft_svd="full"); use_cayley_neumann replaces the inverse by
OFTv2's truncated Neumann series, as in oft.py.

Checked against: the paper's method section (the principal subspace from the SVD, A with orthonormal
rows, an orthogonal Cayley-parameterised R between A and B, the two relaxing vectors, ΔW = B (R − I) A);
peft 0.21.2 `peft/tuners/psoft/layer.py` (OrthLayer.get_matrix, _build_psoft_ab_cache_buffers with
psoft_init, forward, get_delta_weight); the oracle tests compare A, B, outputs, gradients and merged
weights with peft's PsoftModel.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import AdditiveUpdate, Target, freeze_base, linear_dims, linear_weight, replace_modules
from reference_impls.oft import cayley as neumann_cayley
from reference_impls.oft import skew


@dataclass
class PSOFTConfig:
    r: int = 32                                   # dimension of the principal subspace
    alpha: float = 32                             # s = alpha / r
    dropout: float = 0.0                          # dropout on the input of the PSOFT branch
    orthogonal: bool = True                       # Cayley-parameterised R (else a free r x r matrix)
    scaling_vectors: bool = True                  # train a and b around R
    use_cayley_neumann: bool = False              # Neumann series instead of the exact inverse
    num_cayley_neumann_terms: int = 5             # terms of the series
    target_modules: tuple[str, ...] = ("q", "v")  # roles or module-name suffixes


class PSOFTLinear(AdditiveUpdate):
    def __init__(self, t: Target, config: PSOFTConfig) -> None:
        super().__init__()
        d_in, d_out = linear_dims(t.module)
        r = config.r
        if r > min(d_in, d_out):
            raise ValueError(f"PSOFT: r={r} exceeds min(d_in, d_out) = {min(d_in, d_out)} of {t.name}")
        self.base, self.config, self.r, self.scaling = t.module, config, r, config.alpha / r
        U, S, Vh = torch.linalg.svd(linear_weight(t.module).detach().float(), full_matrices=False)
        self.register_buffer("A", Vh[:r].contiguous())                    # (r, d_in), orthonormal rows
        self.register_buffer("B", (U[:, :r] * (S[:r] / self.scaling)))    # (d_out, r): s B A = U_r S_r V_rᵀ
        # Q = 0 (or R = I) and a = b = 1: R = I, so the wrapped layer starts identical to the base layer
        self.Q = nn.Parameter(torch.zeros(r * (r - 1) // 2) if config.orthogonal else torch.eye(r))
        self.a = nn.Parameter(torch.ones(r)) if config.scaling_vectors else None
        self.b = nn.Parameter(torch.ones(r)) if config.scaling_vectors else None
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.merged = False

    def rotation(self) -> torch.Tensor:
        """R = diag(b) Cayley(Q) diag(a): (r, r)."""
        c = self.config
        if not c.orthogonal:
            R = self.Q
        else:
            Q = skew(self.Q[None], self.r)[0]  # (r, r), Q = −Qᵀ
            if c.use_cayley_neumann:
                R = neumann_cayley(Q[None], True, c.num_cayley_neumann_terms)[0]
            else:
                I = torch.eye(self.r, dtype=Q.dtype, device=Q.device)  # noqa: E741
                R = torch.linalg.solve(I - Q, I + Q, left=False)  # X (I − Q) = I + Q
        if self.b is not None:
            R = self.b[:, None] * R * self.a[None, :]
        return R

    def delta_weight(self) -> torch.Tensor:
        I = torch.eye(self.r, dtype=self.A.dtype, device=self.A.device)  # noqa: E741
        return self.scaling * self.B @ (self.rotation() - I) @ self.A  # (d_out, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)  # (B, T, d_out)
        if self.merged:
            return h
        z = F.linear(self.dropout(x), self.A)             # A x: (B, T, r)
        z = F.linear(z, self.rotation()) - z              # (R − I) A x
        return h + self.scaling * F.linear(z, self.B)     # (B, T, d_out)


def apply(model: nn.Module, config: PSOFTConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules, lambda t: PSOFTLinear(t, config))
    return model
