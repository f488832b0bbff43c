"""PEANuT: Parameter-Efficient Adaptation with Weight-aware Neural Tweakers.

Equation:   ΔW = s · (f(W0ᵀ))ᵀ,  f(U) = φ_D(...φ_1(σ(U Aᵀ))...) Bᵀ  with U = W0ᵀ ∈ R^{d_in × d_out}:
              H_0 = σ(W0ᵀ Aᵀ)                         A ∈ R^{r × d_out}       (d_in, r)
              encoders  H_i = σ(H_{i−1} E_iᵀ),         E_i ∈ R^{r × r},  i = 1..depth (each H_{i−1} kept)
              decoders  G_i = σ(G_{i−1} D_iᵀ) + H_{depth−i},  D_i ∈ R^{r × r},  G_0 = H_depth
              ΔWᵀ = s · G_depth Bᵀ                     B ∈ R^{d_out × r}       (d_in, d_out)
            h = W0 x + ΔW x
Trainable:  2 * r * d_out + 2 * depth * r * r per targeted module   (catalog: trainable_params.per_target)
Paper:      "PEANuT: Parameter-Efficient Adaptation with Weight-aware Neural Tweakers", Yibo Zhong et al., 2024,
            arXiv 2410.01870.

The update is a small nonlinear network (the "tweaker") applied to the frozen weight itself, each column
of W0ᵀ (each input feature's weights to all outputs) projected to r dimensions, transformed, and projected
back; depth = 0 gives ΔW = s (σ(W0ᵀ Aᵀ) Bᵀ)ᵀ. A and the hidden layers are Kaiming-uniform (nn.Linear's
init) and B = 0, so ΔW = 0 and the adapted model starts equal to the base model. ΔW depends on W0 only, so
it merges; unmerging restores the W0 saved at merge time (as peft does) rather than subtracting an update
that would now be computed from the merged weight.

Checked against: the paper's method section (a weight-aware neural tweaker producing ΔW from W0, zero
init of the last projection, deeper tweakers with residual connections); peft 0.21.2
`peft/tuners/peanut/layer.py` (_compute_delta_weight, reset_peanut_parameters, merge, unmerge, forward);
the oracle tests compare outputs, gradients and merged weights with peft's PeanutModel.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from reference_impls._core import (AdditiveUpdate, freeze_base, kaiming_uniform_, linear_dims, linear_weight,
                                   replace_modules)


@dataclass
class PEANuTConfig:
    r: int = 32                                   # width of the tweaker's hidden representation
    depth: int = 0                                # encoder/decoder pairs between A and B
    activation: str = "relu"                      # σ, a transformers ACT2FN name
    scaling: float = 1.0                          # s
    target_modules: tuple[str, ...] = ("q", "v")  # roles or module-name suffixes


class PEANuTLinear(AdditiveUpdate):
    def __init__(self, base: nn.Module, r: int, depth: int = 0, activation: str = "relu", scaling: float = 1.0) -> None:
        super().__init__()
        _, d_out = linear_dims(base)
        self.base, self.scaling, self.act = base, scaling, ACT2FN[activation]
        self.A = nn.Parameter(kaiming_uniform_(torch.empty(r, d_out)))                                  # (r, d_out)
        self.E = nn.ParameterList([nn.Parameter(kaiming_uniform_(torch.empty(r, r))) for _ in range(depth)])
        self.D = nn.ParameterList([nn.Parameter(kaiming_uniform_(torch.empty(r, r))) for _ in range(depth)])
        # zero init: ΔW = 0, so the wrapped layer starts identical to the base layer
        self.B = nn.Parameter(torch.zeros(d_out, r))                                                     # (d_out, r)
        self.merged = False

    def delta_weight(self, W0: torch.Tensor | None = None) -> torch.Tensor:
        W0 = linear_weight(self.base) if W0 is None else W0                # (d_out, d_in)
        H = self.act(F.linear(W0.T, self.A))                               # σ(W0ᵀ Aᵀ): (d_in, r)
        kept = []
        for E in self.E:
            kept.append(H)
            H = self.act(F.linear(H, E))                                   # (d_in, r)
        for i, D in enumerate(self.D):
            H = self.act(F.linear(H, D)) + kept[len(kept) - 1 - i]         # residual from the mirrored encoder
        return self.scaling * F.linear(H, self.B).T                        # (d_out, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)  # (B, T, d_out)
        return h if self.merged else h + F.linear(x, self.delta_weight())

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            W = linear_weight(self.base)
            self.register_buffer("W0", W.detach().clone(), persistent=False)  # ΔW is a function of W0: keep it
            W.add_(self.delta_weight(self.W0))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            linear_weight(self.base).copy_(self.W0)
            del self.W0
            self.merged = False


def apply(model: nn.Module, config: PEANuTConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules,
                    lambda t: PEANuTLinear(t.module, config.r, config.depth, config.activation, config.scaling))
    return model
