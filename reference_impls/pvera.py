"""PVeRA: Probabilistic Vector-Based Random Matrix Adaptation.

Equation:   [μ; log σ²] = Λ_d A dropout(x),   A ∈ R^{2r × d_in} frozen random,  Λ_d = diag(d), d ∈ R^{2r}
            z = μ + ε ⊙ σ, ε ~ N(0, I) while training (and at inference if sample_at_inference); else z = μ
            h = W0 x + Λ_b B z,           B ∈ R^{d_out × r} frozen random,  Λ_b = diag(b), b ∈ R^{d_out}
Trainable:  2 * r + d_out per targeted module      (catalog: trainable_params.per_target)
Paper:      "PVeRA: Probabilistic Vector-Based Random Matrix Adaptation", Leo Fillioux et al., 2026 (WACV 2026),
            arXiv 2512.07703.

VeRA (vera.py) with a latent: the shared down-projection has 2r rows, whose scaled outputs are read as the
mean and log-variance of an r-dimensional Gaussian, sampled with the reparameterisation trick before the
shared up-projection. A and B are shared by every adapted layer, sliced to its shape, and drawn once per
model, A then B, Kaiming-uniform from a CPU generator seeded with `projection_prng_key` (peft). ε comes
from torch's global generator, or from a per-layer generator seeded with `generator_seed` when given.

Initialisation (as VeRA): b = 0, so the adapted model starts equal to the base model; d = d_initial.
With z = μ the update ΔW = Λ_b B Λ_d[:r] A[:r] is fixed and merges into W0 (a merged model no longer
samples).

Checked against: the paper's method section (VeRA's shared random matrices, the mean and log-variance
read from the down-projection, reparameterised sampling during training, the mean at inference);
peft 0.21.2 `peft/tuners/pvera/layer.py` (forward: chunk into μ, log σ²; _reparametrize;
get_delta_weight from the first halves) and `model.py` (the shared pvera_A (2r, d_in), pvera_B (d_out, r));
the oracle tests compare outputs (mean and seeded samples), gradients and merged weights with peft's PveraModel.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import find_targets, freeze_base, linear_dims, replace_module
from reference_impls.vera import VeRALinear


@dataclass
class PVeRAConfig:
    r: int = 256                                   # size of the latent (A has 2r rows)
    d_initial: float = 0.1                         # initial value of every entry of d
    dropout: float = 0.0                           # dropout on the input of the PVeRA branch
    sample_at_inference: bool = False              # keep sampling z in eval mode
    projection_prng_key: int = 0                   # seed of the shared A and B
    generator_seed: int | None = None              # seed of ε (None: torch's global generator)
    target_modules: tuple[str, ...] = ("q", "v")   # roles or module-name suffixes


def shared_projections(d_in_max: int, d_out_max: int, r: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A (2r, d_in_max) drawn first, then B (d_out_max, r): Kaiming-uniform (torch's default gain sqrt(2))."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    A = nn.init.kaiming_uniform_(torch.empty(2 * r, d_in_max), generator=g)
    B = nn.init.kaiming_uniform_(torch.empty(d_out_max, r), generator=g)
    return A, B


class PVeRALinear(VeRALinear):
    """VeRA's layer (d over the 2r rows of A, b over d_out) with a sampled latent between A and B."""

    def __init__(self, base: nn.Module, A: torch.Tensor, B: torch.Tensor, d_initial: float, dropout: float = 0.0,
                 sample_at_inference: bool = False, generator_seed: int | None = None) -> None:
        super().__init__(base, A, B, d_initial, dropout)
        self.r = B.shape[1]
        self.sample_at_inference = sample_at_inference
        self.generator = None if generator_seed is None else torch.Generator().manual_seed(generator_seed)

    def delta_weight(self) -> torch.Tensor:  # the mean update
        A, B = self.A[: self.r, : self.d_in], self.B[: self.d_out, :]  # (r, d_in), (d_out, r)
        return (self.b[:, None] * B) @ (self.d[: self.r, None] * A)   # Λ_b B Λ_d[:r] A[:r]: (d_out, d_in)

    def sample(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        if not (self.training or self.sample_at_inference):
            return mu
        std = torch.exp(0.5 * logvar)
        eps = (torch.randn_like(std) if self.generator is None
               else torch.randn(std.shape, dtype=std.dtype, generator=self.generator).to(std.device))
        return mu + eps * std  # reparameterisation: the gradient flows to μ and σ

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)  # (B, T, d_out)
        if self.merged:
            return h
        A, B = self.A[:, : self.d_in], self.B[: self.d_out, :]              # (2r, d_in), (d_out, r)
        mu, logvar = (self.d * F.linear(self.dropout(x), A)).chunk(2, dim=-1)  # (B, T, r) each
        return h + self.b * F.linear(self.sample(mu, logvar), B)            # (B, T, d_out)


def apply(model: nn.Module, config: PVeRAConfig) -> nn.Module:
    freeze_base(model)
    targets = find_targets(model, config.target_modules)
    dims = [linear_dims(t.module) for t in targets]
    A, B = shared_projections(max(d for d, _ in dims), max(d for _, d in dims), config.r, config.projection_prng_key)
    for t in targets:
        replace_module(model, t.name, PVeRALinear(t.module, A, B, config.d_initial, config.dropout,
                                                  config.sample_at_inference, config.generator_seed))
    return model
