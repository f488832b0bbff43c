"""Uni-LoRA: one trainable vector projected into the LoRA factors of every layer.

Equation:   θ_D = P θ_d:  every entry of every adapted layer's A ∈ R^{r × d_in} and B ∈ R^{d_out × r}
            (D entries in all) is one entry of the shared θ_d ∈ R^d, scaled by 1 / sqrt(n_i), n_i the number of
            entries tied to θ_d[i] (so P has orthonormal columns: an isometry);   h = W0 x + B A dropout(x)
Trainable:  theta_d_length once for the whole model      (catalog: trainable_params.total)
Paper:      "Uni-LoRA: One Vector is All You Need", Kaiyang Li et al., 2025, arXiv 2506.00799.

P is a fixed random grouping of the D LoRA entries into d groups. Following peft, the grouping is balanced:
every index of θ_d is used ⌊D / d⌋ or ⌈D / d⌉ times. The D indices are drawn with numpy's default_rng
seeded with `proj_seed`: ⌊D / d⌋ copies of 0..d−1, then D mod d distinct extra indices, then a shuffle;
they are handed out in model order, each layer's A (row-major) then its B. θ_d starts ~ U(−0.02, 0.02)
(peft's init_theta_d_bound); neither factor is zero, so the adapted model does not start exactly at the
base model. ΔW = B A merges into W0.

Checked against: the paper's method section (all LoRA parameters as the image of a d-dimensional vector
under a projection; Uni-LoRA's P: random one-hot rows, columns normalised to unit length); peft 0.21.2
`peft/tuners/unilora/layer.py` (_get_lora_matrices: θ_d[indices] * scales; forward) and `model.py`
(generate_index, _assign_unilora_indices_and_scales, _init_unilora_theta_d); the oracle tests compare the
indices, outputs, gradients and merged weights with peft's UniLoraModel.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import AdditiveUpdate, find_targets, freeze_base, linear_dims, replace_module


@dataclass
class UniLoRAConfig:
    r: int = 4                                    # rank of the reconstructed factors
    theta_d_length: int = 256                     # d, the length of the one trainable vector
    proj_seed: int = 42                           # seed of the random grouping P
    dropout: float = 0.0                          # dropout on the input of the Uni-LoRA branch
    init_theta_d_bound: float = 0.02              # θ_d ~ U(-bound, bound)
    target_modules: tuple[str, ...] = ("q", "v")  # roles or module-name suffixes


def balanced_indices(D: int, d: int, seed: int) -> torch.Tensor:
    """D indices into θ_d, each of 0..d-1 used ⌊D/d⌋ or ⌈D/d⌉ times, shuffled (peft's generate_index)."""
    rng = np.random.default_rng(seed)
    data = np.repeat(np.arange(d), D // d)
    if D % d:
        data = np.concatenate([data, rng.choice(d, size=D % d, replace=False)])
    rng.shuffle(data)
    return torch.as_tensor(data, dtype=torch.long)  # (D,)


class UniLoRALinear(AdditiveUpdate):
    def __init__(self, base: nn.Module, theta: nn.Parameter, index_A: torch.Tensor, index_B: torch.Tensor,
                 scale_A: torch.Tensor, scale_B: torch.Tensor, dropout: float = 0.0) -> None:
        super().__init__()
        self.base, self.theta = base, theta  # θ_d: the same Parameter in every layer
        self.register_buffer("index_A", index_A)  # (r, d_in) positions in θ_d
        self.register_buffer("index_B", index_B)  # (d_out, r)
        self.register_buffer("scale_A", scale_A)  # (r, d_in) 1 / sqrt(n_i) of each entry's index
        self.register_buffer("scale_B", scale_B)  # (d_out, r)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.theta[self.index_A] * self.scale_A, self.theta[self.index_B] * self.scale_B  # A, B

    def delta_weight(self) -> torch.Tensor:
        A, B = self.factors()
        return B @ A  # (d_out, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)  # (B, T, d_out)
        if self.merged:
            return h
        A, B = self.factors()
        return h + F.linear(F.linear(self.dropout(x), A), B)


def apply(model: nn.Module, config: UniLoRAConfig) -> nn.Module:
    freeze_base(model)
    targets = find_targets(model, config.target_modules)
    shapes = [((config.r, d_in), (d_out, config.r)) for d_in, d_out in (linear_dims(t.module) for t in targets)]
    D = sum(a[0] * a[1] + b[0] * b[1] for a, b in shapes)
    index = balanced_indices(D, config.theta_d_length, config.proj_seed)  # (D,)
    counts = torch.bincount(index, minlength=config.theta_d_length).float()
    inv_sqrt = torch.where(counts > 0, counts.clamp(min=1).rsqrt(), torch.zeros_like(counts))  # P's column norms
    theta = nn.Parameter(torch.empty(config.theta_d_length).uniform_(-config.init_theta_d_bound,
                                                                     config.init_theta_d_bound))  # (d,)
    start = 0
    for t, (shape_A, shape_B) in zip(targets, shapes):
        iA = index[start:start + shape_A[0] * shape_A[1]].view(shape_A)
        start += iA.numel()
        iB = index[start:start + shape_B[0] * shape_B[1]].view(shape_B)
        start += iB.numel()
        replace_module(model, t.name, UniLoRALinear(t.module, theta, iA.clone(), iB.clone(), inv_sqrt[iA], inv_sqrt[iB],
                                                    config.dropout))
    return model
