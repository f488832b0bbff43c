"""VeRA: Vector-based Random Matrix Adaptation.

Equation:   h = W0 x + Λ_b B Λ_d A dropout(x),   Λ_d = diag(d) ∈ R^{r × r},  Λ_b = diag(b) ∈ R^{d_out × d_out}
            A ∈ R^{r × d_in}, B ∈ R^{d_out × r}: frozen, random, and the same pair for every adapted layer
Trainable:  r + d_out per targeted module    (catalog: trainable_params.per_target = "r + d_out")
Paper:      "VeRA: Vector-based Random Matrix Adaptation", Dawid J. Kopiczko et al., 2023 (ICLR 2024),
            arXiv 2310.11454.

A and B are drawn once per model, at the largest d_in and d_out among the targeted modules, and each
layer uses their top-left slice A[:, :d_in], B[:d_out, :] (paper §3.1: shared across layers; the slicing
for layers of different shapes is peft's). They are Kaiming-uniform (bound sqrt(6 / fan_in)), drawn
from a CPU generator seeded with `projection_prng_key`, A first, then B: so they are reproducible from
the seed and need not be saved (`save_projection` only decides whether they enter the state dict).

Initialisation (paper §3.2): b = 0, so Λ_b B Λ_d A = 0 and the adapted model starts equal to the base
model; every entry of d starts at `d_initial`. After training ΔW = Λ_b B Λ_d A merges into W0.

Checked against: paper §3 (eq. 2, the count L_tuned·(d_model + r) of §3.1, the init of §3.2);
peft 0.21.2 `peft/tuners/vera/layer.py` (forward λ_b ⊙ B_s(λ_d ⊙ A_s x), get_delta_weight) and
`peft/tuners/vera/model.py` (_kaiming_init with the seeded generator, _find_dim); the oracle tests
compare outputs, gradients and merged weights with peft's VeraModel on the same shared A and B.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import AdditiveUpdate, find_targets, freeze_base, linear_dims, replace_module


@dataclass
class VeRAConfig:
    r: int = 256                                   # rank of the shared random A and B
    d_initial: float = 0.1                         # initial value of every entry of d (Λ_d's diagonal)
    dropout: float = 0.0                           # dropout on the input of the VeRA branch
    projection_prng_key: int = 0                   # seed of the shared A and B
    save_projection: bool = True                   # keep A and B in the state dict (else regenerate from the seed)
    target_modules: tuple[str, ...] = ("q", "v")   # roles or module-name suffixes


def kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """U(-sqrt(6 / fan_in), sqrt(6 / fan_in)) with fan_in = shape[1]: Kaiming-uniform with gain sqrt(2)."""
    bound = math.sqrt(3.0) * math.sqrt(2.0) / math.sqrt(shape[1])
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


def shared_projections(d_in_max: int, d_out_max: int, r: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen random pair shared by every layer: A (r, d_in_max) drawn first, then B (d_out_max, r)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    A = kaiming_uniform((r, d_in_max), g)   # (r, d_in_max)
    B = kaiming_uniform((d_out_max, r), g)  # (d_out_max, r)
    return A, B


class VeRALinear(AdditiveUpdate):
    def __init__(self, base: nn.Module, A: torch.Tensor, B: torch.Tensor, d_initial: float, dropout: float = 0.0,
                 persistent: bool = True) -> None:
        super().__init__()
        d_in, d_out = linear_dims(base)
        r = A.shape[0]
        self.base = base
        # the shared tensors themselves (no copy): every VeRALinear of a model holds the same A and B
        self.register_buffer("A", A, persistent=persistent)  # (r, d_in_max)
        self.register_buffer("B", B, persistent=persistent)  # (d_out_max, r)
        self.d_in, self.d_out = d_in, d_out
        self.d = nn.Parameter(torch.full((r,), float(d_initial)))  # (r,), the diagonal of Λ_d
        # zero init: Λ_b = 0 makes ΔW = 0, so the wrapped layer starts identical to the base layer
        self.b = nn.Parameter(torch.zeros(d_out))  # (d_out,), the diagonal of Λ_b
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        A, B = self.A[:, : self.d_in], self.B[: self.d_out, :]  # (r, d_in), (d_out, r)
        return (self.b[:, None] * B) @ (self.d[:, None] * A)  # Λ_b B Λ_d A: (d_out, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)  # (B, T, d_out)
        if self.merged:
            return h
        A, B = self.A[:, : self.d_in], self.B[: self.d_out, :]
        z = self.d * F.linear(self.dropout(x), A)  # Λ_d A x: (B, T, r)
        return h + self.b * F.linear(z, B)           # Λ_b B z: (B, T, d_out)


def apply(model: nn.Module, config: VeRAConfig) -> nn.Module:
    freeze_base(model)
    targets = find_targets(model, config.target_modules)
    dims = [linear_dims(t.module) for t in targets]
    A, B = shared_projections(max(d for d, _ in dims), max(d for _, d in dims), config.r, config.projection_prng_key)
    for t in targets:
        replace_module(model, t.name, VeRALinear(t.module, A, B, config.d_initial, config.dropout,
                                                 persistent=config.save_projection))
    return model
