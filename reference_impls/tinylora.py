"""TinyLoRA: an SVD-based LoRA whose r × r core is produced from a tiny trainable vector.

Equation:   W0 = U S Vᵀ (SVD);  A = sqrt(S_r) V_rᵀ ∈ R^{r × d_in},  B = U_r sqrt(S_r) ∈ R^{d_out × r} (frozen)
            R = Σ_{j=1}^{u} v_j P_j,   P ∈ R^{u × r × r} fixed random (N(0, 1/r)),  v ∈ R^u trained
            h = W0 x + B R A dropout(x)
Trainable:  u per targeted module (weight_tying = 0)      (catalog: trainable_params.per_target)
Paper:      "Learning to Reason in 13 Parameters", John X. Morris et al., 2026, arXiv 2602.04118.

A LoRA-XS-style adapter (frozen truncated-SVD factors around a small r × r matrix) in which even the
r × r matrix is not trained directly: it is a combination of u fixed random matrices with trainable
coefficients v. Module i (in model order) draws its P from a CPU generator seeded with
projection_seed + i. With weight_tying > 0, consecutive modules share one v (peft's grouping: n targeted
modules form max(1, round(n (1 − weight_tying))) groups of n // groups, the last group taking the rest),
down to a single v for the whole model at weight_tying = 1. v starts at zero, so R = 0, ΔW = 0 and the
adapted model starts equal to the base model; ΔW = B R A merges into W0. r is capped at min(d_in, d_out).

Checked against: the paper's method section (SVD factors frozen, the core as a projection of a tiny
trainable vector through fixed random tensors, tying the vector across modules); peft 0.21.2
`peft/tuners/tinylora/layer.py` (_init_svd, _init_projection, _compute_R, forward, get_delta_weight) and
`model.py` (the group of each module, zero init of v); the oracle tests compare outputs, gradients and
merged weights with peft's TinyLoraModel, with and without tying.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import AdditiveUpdate, find_targets, freeze_base, linear_dims, linear_weight, replace_module


@dataclass
class TinyLoRAConfig:
    r: int = 2                                    # rank of the frozen SVD factors
    u: int = 64                                   # length of each trainable vector v
    weight_tying: float = 0.0                     # 0: one v per module ... 1: one v for the whole model
    dropout: float = 0.0                          # dropout on the input of the TinyLoRA branch
    projection_seed: int = 42                     # module i's P is drawn with seed projection_seed + i
    target_modules: tuple[str, ...] = ("q", "v")  # roles or module-name suffixes


def group_of(i: int, n: int, weight_tying: float) -> int:
    """The group (index of the shared v) of module i of n."""
    groups = max(1, round(n * (1.0 - weight_tying)))
    return min(i // max(1, n // groups), groups - 1)


class TinyLoRALinear(AdditiveUpdate):
    def __init__(self, base: nn.Module, v: nn.Parameter, r: int, seed: int, dropout: float = 0.0) -> None:
        super().__init__()
        r = min(r, *linear_dims(base))
        self.base, self.v = base, v  # v may be shared with other layers
        U, S, Vh = torch.linalg.svd(linear_weight(base).detach().float(), full_matrices=False)
        root = S[:r].sqrt()                                               # (r,)
        self.register_buffer("A", (root[:, None] * Vh[:r]).contiguous())  # sqrt(S_r) V_rᵀ: (r, d_in)
        self.register_buffer("B", (U[:, :r] * root).contiguous())         # U_r sqrt(S_r): (d_out, r)
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("P", torch.normal(0.0, 1.0 / r ** 0.5, size=(v.numel(), r, r), generator=g))  # (u, r, r)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def core(self) -> torch.Tensor:
        return torch.einsum("j,jab->ab", self.v, self.P)  # R = Σ_j v_j P_j: (r, r)

    def delta_weight(self) -> torch.Tensor:
        return self.B @ self.core() @ self.A  # (d_out, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)  # (B, T, d_out)
        if self.merged:
            return h
        z = F.linear(F.linear(self.dropout(x), self.A), self.core())  # R A x: (B, T, r)
        return h + F.linear(z, self.B)


def apply(model: nn.Module, config: TinyLoRAConfig) -> nn.Module:
    freeze_base(model)
    targets = find_targets(model, config.target_modules)
    n = len(targets)
    # zero init: R = 0, so every wrapped layer starts identical to its base layer
    vs: dict[int, nn.Parameter] = {}
    for i, t in enumerate(targets):
        g = group_of(i, n, config.weight_tying)
        if g not in vs:
            vs[g] = nn.Parameter(torch.zeros(config.u))  # (u,)
        replace_module(model, t.name, TinyLoRALinear(t.module, vs[g], config.r, config.projection_seed + i,
                                                     config.dropout))
    return model
