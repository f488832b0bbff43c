"""DoRA: Weight-Decomposed Low-Rank Adaptation.

Equation:   W' = m ⊙ (W0 + s B A) / ||W0 + s B A||_c,    s = alpha / r,   ||·||_c the norm of each output row
            h  = W' x + b = (m / ||W0 + s B A||_c) ⊙ (W0 x + s B A x) + b
Trainable:  r * (d_in + d_out) + d_out per targeted module      (catalog: trainable_params.per_target)
Paper:      "DoRA: Weight-Decomposed Low-Rank Adaptation", Shih-Yang Liu et al., 2024 (ICML 2024),
            arXiv 2402.09353.

The pretrained weight is split into a magnitude m (one entry per output feature) and a direction
V = W0 + s B A that LoRA's branch updates; m starts at ||W0||_c and B at zero, so W' = W0 at init.
The norm ||W0 + s B A||_c is treated as a constant in the backward pass (the paper's §4.3 memory
saving, which peft follows): it is recomputed every step but no gradient flows through it.

The paper writes the norm "column-wise" of a (d_in, d_out) matrix; with torch's (d_out, d_in) weight that
is one norm per output feature (row), which is what peft computes and what this file does. Merging writes
W' into the base weight, so inference costs nothing extra; unmerging divides the magnitude back out.

Checked against: the paper's eq. 5 (W' = m (W0 + B A) / ||W0 + B A||_c) and §4.3 (the detached norm); peft 0.21.2 `peft/tuners/lora/dora.py`
(DoraLinearLayer: magnitude init, forward, and the merge in `peft/tuners/lora/layer.py`); the oracle test
compares outputs, gradients and merged weights with peft's LoraConfig(use_dora=True).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import freeze_base, linear_weight, replace_modules
from reference_impls.lora import LoRALinear


@dataclass
class DoRAConfig:
    r: int = 32                       # rank of the LoRA update of the direction
    alpha: float = 64                 # the LoRA update is scaled by alpha / r
    target_modules: tuple[str, ...] = ("q", "k", "v", "up", "down")  # the authors' LLaMA runs


class DoRALinear(LoRALinear):
    def __init__(self, base: nn.Module, r: int, alpha: float) -> None:
        super().__init__(base, r, alpha)
        with torch.no_grad():
            # m = ||W0||_c: with B = 0 the decomposed weight equals W0
            self.m = nn.Parameter(linear_weight(base).norm(dim=1).clone())  # (d_out,)
        self._norm_at_merge: torch.Tensor | None = None

    def direction_norm(self) -> torch.Tensor:
        """||W0 + s B A||_c, one value per output feature, outside the autograd graph (paper §4.3)."""
        with torch.no_grad():
            return (linear_weight(self.base) + self.delta_weight()).norm(dim=1)  # (d_out,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        if self.merged:
            return self.base(x)
        W0 = linear_weight(self.base)  # (d_out, d_in)
        scale = self.m / self.direction_norm()  # (d_out,)
        lora = F.linear(F.linear(x, self.A), self.B) * self.scaling  # s B A x: (B, T, d_out)
        h = scale * (F.linear(x, W0) + lora)  # (B, T, d_out)
        bias = getattr(self.base, "bias", None)
        return h if bias is None else h + bias

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            norm = self.direction_norm()
            W = linear_weight(self.base)
            W.add_(self.delta_weight()).mul_((self.m / norm)[:, None])  # W' = m (W0 + ΔW) / ||W0 + ΔW||_c
            self._norm_at_merge = norm
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            W = linear_weight(self.base)
            W.mul_((self._norm_at_merge / self.m)[:, None]).sub_(self.delta_weight())
            self._norm_at_merge = None
            self.merged = False


def apply(model: nn.Module, config: DoRAConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules, lambda t: DoRALinear(t.module, config.r, config.alpha))
    return model
