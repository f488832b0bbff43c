"""SoRA: Sparse Low-rank Adaptation, a gated LoRA whose gate is made sparse by a proximal-gradient step.

Equation:   h = W0 x + (alpha / r_max) * B (g ⊙ (A x)),   A ∈ R^{r_max × d_in}, g ∈ R^{r_max}, B ∈ R^{d_out × r_max}
            after every optimizer step the gate is soft-thresholded (the proximal step of λ ||g||_1):
                g ← sign(g) · max(|g| − η·λ, 0)
            so gate entries reach exactly 0; the matching rows of A and columns of B can then be removed.
Trainable:  r_max * (d_in + d_out + 1) per targeted module      (catalog: trainable_params.per_target)
Paper:      "Sparse Low-rank Adaptation of Pre-trained Language Models", Ning Ding, Xingtai Lv, Qiaosen Wang,
            Yulin Chen, Bowen Zhou, Zhiyuan Liu, Maosong Sun, EMNLP 2023, arXiv 2311.11696.

Init (the authors' code): A ~ Kaiming-uniform, B = 0, g ~ N(0, 1); B = 0 makes ΔW = 0, so the adapted model
starts as the base model. ΔW = (alpha / r_max) B diag(g) A merges into W0 like LoRA's.

Checked against: the paper §3 (the gate between the down- and up-projection, h = W0 x + W_u (g ⊙ W_d x), and
the proximal update g ← T_{η·λ}(g − η ∇L0) with the soft-threshold T_ξ(x) = sign(x) max(|x| − ξ, 0)); the
authors' code github.com/TsinghuaC3I/SoRA @c275ac2 (src/lora.py LowRankLinear: gate randn(1, r) multiplied
between lora_A and lora_B, scaling lora_alpha / r with lora_alpha 16; src/sparse_optimizer_multiply_lr.py:
Adam step on g, then soft-threshold at sparse_lambda · lr). Simplifications: the gate shares
`_core.train`'s Adam with A and B (the authors give it its own AdamW, at the same learning rate by default),
and `training_hooks` applies the threshold after that step, with η given in the config (it should equal
the training learning rate). The authors' default optimizer (src/sparse_optimizer.py) thresholds at
sparse_lambda_2 alone, 3e-4 in their GLUE script; the defaults here (η = 1e-2, λ = 3e-2) give that ξ.
Their three in-place masks also zero an entry that the shrink itself brings below ξ (ξ < |g| < 2ξ);
the paper's T_ξ, used here, keeps it at |g| − ξ.
The sparsifying scheduler (raising λ over training) and the final removal of zero-gated ranks are not
implemented; `active_ranks` reports how many gate entries are non-zero.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import AdditiveUpdate, freeze_base, kaiming_uniform_, linear_dims, replace_modules


@dataclass
class SoRAConfig:
    r_max: int = 8                                # initial rank (the authors' GLUE script: 8)
    alpha: float = 16                             # the update is scaled by alpha / r_max (the authors' code: 16)
    sparse_lambda: float = 3e-2                   # λ, weight of the L1 penalty on the gate
    eta: float = 1e-2                             # η, the gate's learning rate in the threshold η·λ
    dropout: float = 0.0                          # dropout on the input of the low-rank branch
    target_modules: tuple[str, ...] = ("q", "v")  # LoRA's placement


class SoRALinear(AdditiveUpdate):
    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        d_in, d_out = linear_dims(base)
        self.base = base
        self.r, self.scaling = r, alpha / r
        self.A = nn.Parameter(kaiming_uniform_(torch.empty(r, d_in)))  # (r, d_in), down-projection
        self.gate = nn.Parameter(torch.randn(r))                       # (r,), g
        # zero init: B diag(g) A = 0, so the wrapped layer starts identical to the base layer
        self.B = nn.Parameter(torch.zeros(d_out, r))                   # (d_out, r), up-projection
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * (self.B * self.gate) @ self.A  # (d_out, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)  # (B, T, d_out)
        if self.merged:
            return h
        z = F.linear(self.dropout(x), self.A) * self.gate  # g ⊙ (A x): (B, T, r)
        return h + F.linear(z * self.scaling, self.B)     # (B, T, d_out)


def sora_layers(model: nn.Module) -> list[SoRALinear]:
    return [m for m in model.modules() if isinstance(m, SoRALinear)]


@torch.no_grad()
def soft_threshold_(g: torch.Tensor, xi: float) -> torch.Tensor:
    """In place: g ← sign(g) · max(|g| − ξ, 0), the proximal operator of ξ ||g||_1."""
    return g.copy_(torch.sign(g) * torch.clamp(g.abs() - xi, min=0.0))


def active_ranks(model: nn.Module) -> list[int]:
    """Non-zero gate entries per SoRA layer: the rank each keeps once the zero-gated ranks are removed."""
    return [int((m.gate != 0).sum()) for m in sora_layers(model)]


def training_hooks(model: nn.Module, config: SoRAConfig) -> dict[str, Callable[..., Any]]:
    """`after_step` for _core.train: the proximal step on every gate after the optimizer step."""
    layers, xi = sora_layers(model), config.eta * config.sparse_lambda

    def proximal_step(step: int) -> None:
        for m in layers:
            soft_threshold_(m.gate, xi)

    return {"after_step": proximal_step}


def apply(model: nn.Module, config: SoRAConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules,
                    lambda t: SoRALinear(t.module, config.r_max, config.alpha, config.dropout))
    return model
