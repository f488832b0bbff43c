"""Intrinsic SAID: fine-tuning every weight through one random low-dimensional subspace.

Equation:   SAID (structure-aware):  θ_i = θ_{0,i} + λ_i · P_i(θ^{d-m}),   i = 1..m parameter tensors
            DID (direct, said=False): θ_i = θ_{0,i} + P_i(θ^d)
            P_i: R^{d-m} -> R^{D_i} is a Fastfood transform (one per tensor, D_i its number of entries):
                P_i(v) = [H G Π H B pad(v)]_{1..D_i} / (‖G‖ √D_i),   pad(v) ∈ R^{L}, L = 2^⌈log2 D_i⌉
            with H the (unnormalised) Walsh-Hadamard matrix, B a random ±1 diagonal, Π a random
            permutation, G a random N(0, 1) diagonal; θ^{d-m} (and λ) are the only trained parameters.
Trainable:  intrinsic_dim in total: d - m coordinates of θ plus m scales λ   (catalog: trainable_params.total)
Paper:      "Intrinsic Dimensionality Explains the Effectiveness of Language Model Fine-Tuning",
            Armen Aghajanyan et al., 2020 (ACL-IJCNLP 2021), arXiv 2012.13255.

The d - m / m split follows the paper (Sec. 3: "we give up m dimensions of θ^d" to learn one λ per layer)
and the authors' code (`intrinsic_parameter` of length d - m, `intrinsic_parameter_said` of length m);
a "layer" there is one parameter tensor, as here. Every parameter tensor of the model is reparameterised
(tied tensors once). Init: θ^{d-m} = 0, so the model starts equal to the base model; λ = 1 (the authors'
init), which keeps the gradient of θ^{d-m} at the start that of DID. The normalisation of P_i is the
authors' (their divisor √(L Σ G²) · √(D_i / L) equals ‖G‖ √D_i), which makes P_i roughly norm-preserving.

The projection is random and fixed: B, Π, G come from `seed` and are kept as non-persistent buffers, so
they are regenerated rather than saved. Each forward projects θ into the full parameter space and calls
the base model with those weights (torch.func.functional_call), as the paper does; merge() writes the
update into the weights, after which the forward is the base model's. At this scale (D ~ 25k weights) P
is materialised once as a dense matrix (`dense=True`, the identical linear map); `dense=False` runs the
Fastfood transform on every forward, as the paper does for models with millions of weights. The padded
length is the power of two ≥ max(D_i, d - m); the authors' code sizes it by D_i alone, which for a tensor
smaller than d - m (a bias, a LayerNorm) cuts θ short (F.pad with a negative width).

Checked against: the paper's Sec. 3 as quoted above (θ^{d-m} plus m per-layer scales λ, the Fastfood
projection); the statements about the authors' code (names, λ = 1, the normaliser, the padding) come
from an earlier read and were not re-fetched at a pinned commit in this pass. peft has no Intrinsic
SAID. Numeric pins: test_intrinsic_said.py builds P = [H diag(G) Π H diag(B)]_{1..D,1..d} / (‖G‖ √D)
from an explicit Sylvester Hadamard matrix and permutation matrix, checks the fast transform against the
Walsh-Hadamard matrix and the d - m / m split of the count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call


@dataclass
class IntrinsicSAIDConfig:
    intrinsic_dim: int = 200     # d: total trained numbers (d - m coordinates plus m scales when said)
    said: bool = True            # learn one scale λ per parameter tensor (SAID); False gives DID
    seed: int = 0                # seed of the random projection (regenerated, never saved)
    dense: bool = True           # materialise P once as a (D, d - m) matrix: the same map, faster at small D


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised fast Walsh-Hadamard transform H x along the last dim (..., L), L a power of two."""
    *batch, L = x.shape
    h = 1
    while h < L:
        y = x.reshape(*batch, L // (2 * h), 2, h)                # pairs (a, b) at distance h
        x = torch.stack((y[..., 0, :] + y[..., 1, :], y[..., 0, :] - y[..., 1, :]), dim=-2).reshape(*batch, L)
        h *= 2
    return x


class Fastfood(nn.Module):
    """P: R^{d} -> R^{D}, v ↦ [H G Π H B pad(v)]_{1..D} / (‖G‖ √D); fixed random B, Π, G."""

    def __init__(self, d: int, D: int, generator: torch.Generator) -> None:
        super().__init__()
        self.d, self.D = d, D
        self.L = 2 ** max(math.ceil(math.log2(max(D, d))), 0)  # padded length, a power of two
        signs = torch.randint(0, 2, (self.L,), generator=generator) * 2 - 1
        self.register_buffer("B", signs.float(), persistent=False)
        self.register_buffer("Pi", torch.randperm(self.L, generator=generator), persistent=False)
        self.register_buffer("G", torch.randn(self.L, generator=generator), persistent=False)

    def forward(self, v: torch.Tensor) -> torch.Tensor:  # v: (..., d)
        x = torch.cat([v, v.new_zeros(*v.shape[:-1], self.L - self.d)], dim=-1)  # (..., L)
        x = fwht(self.B * x)[..., self.Pi] * self.G                # (..., L)
        x = fwht(x)[..., : self.D]                                 # (..., D)
        return x / (self.G.norm() * math.sqrt(self.D))

    def matrix(self) -> torch.Tensor:
        """The same linear map as a dense (D, d) matrix: P applied to the d basis vectors."""
        return self(torch.eye(self.d)).T


class SAIDProjection(nn.Module):
    """θ^{d-m}, λ and the per-tensor projections; merge() adds the update to the model's own tensors."""

    def __init__(self, named: list[tuple[str, nn.Parameter]], config: IntrinsicSAIDConfig) -> None:
        super().__init__()
        m = len(named) if config.said else 0
        if config.intrinsic_dim <= m:
            raise ValueError(f"intrinsic_dim {config.intrinsic_dim} leaves nothing to project after the "
                             f"{m} per-tensor scales of SAID")
        self.names = [n for n, _ in named]
        self.targets = [p for _, p in named]  # the model's own tensors, for merge/unmerge (not registered here)
        g = torch.Generator().manual_seed(config.seed)
        self.P = nn.ModuleList(Fastfood(config.intrinsic_dim - m, p.numel(), g) for _, p in named)
        self.sizes = [p.numel() for _, p in named]
        # optional: every P_i stacked as one dense (Σ D_i, d - m) matrix, so a forward is one matmul
        M = torch.cat([P.matrix() for P in self.P]) if config.dense else torch.empty(0)
        self.register_buffer("M", M, persistent=False)
        # zero init: P(0) = 0, so every tensor keeps its pre-trained value and the model starts equal to the base
        self.theta = nn.Parameter(torch.zeros(config.intrinsic_dim - m))  # (d - m,)
        # λ = 1: the authors' init; one scale per tensor (SAID), none for DID
        self.lam = nn.Parameter(torch.ones(m)) if config.said else None   # (m,)
        self.merged = False

    def deltas(self) -> list[torch.Tensor]:
        """Δθ_i = λ_i P_i(θ^{d-m}), each shaped like its tensor."""
        if self.M.numel():
            flat = (self.M @ self.theta).split(self.sizes)         # [(D_i,)]
        else:
            flat = [P(self.theta) for P in self.P]                 # [(D_i,)]
        if self.lam is not None:
            flat = [f * l for f, l in zip(flat, self.lam)]
        return [f.view(p.shape) for f, p in zip(flat, self.targets)]

    def weights(self) -> dict[str, torch.Tensor]:
        return {n: p + delta for n, p, delta in zip(self.names, self.targets, self.deltas())}

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            for p, delta in zip(self.targets, self.deltas()):
                p.add_(delta)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            for p, delta in zip(self.targets, self.deltas()):
                p.sub_(delta)
            self.merged = False


class IntrinsicSAIDModel(nn.Module):
    """The base model run with the weights θ_0 + λ ⊙ P(θ^{d-m}); behaves like the wrapped HF model."""

    def __init__(self, model: nn.Module, config: IntrinsicSAIDConfig) -> None:
        super().__init__()
        self.model = model
        self.said = SAIDProjection(list(model.named_parameters()), config)  # parameters() skips tied copies

    @property
    def config(self) -> Any:  # HF's config, which data helpers and the targeting code read
        return self.model.config

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.said.merged:
            return self.model(*args, **kwargs)
        return functional_call(self.model, self.said.weights(), args, kwargs)


def apply(model: nn.Module, config: IntrinsicSAIDConfig) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return IntrinsicSAIDModel(model, config)
