"""rsLoRA: Rank-Stabilized LoRA.

Equation:   h = W0 x + (alpha / sqrt(r)) * B A x,   A ∈ R^{r × d_in},  B ∈ R^{d_out × r},  W0 frozen
Trainable:  r * (d_in + d_out) per targeted module      (catalog: trainable_params.per_target)
Paper:      "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA", Damjan Kalajdzievski, 2023,
            arXiv 2312.03732.

LoRA with one constant changed: the scaling factor γ_r is alpha / sqrt(r) instead of alpha / r. The
paper shows that with 1/r the adapter's outputs and gradients shrink as r grows, so larger ranks learn
no better; with 1/sqrt(r) they stay of the same order for every r. Everything else (the layer, B = 0 at
init so the model starts equal to the base model, the merge W = W0 + γ_r B A) is lora.py's LoRALinear.

Checked against: paper §3 (γ_r ∈ Θ(1/sqrt(r)), the rsLoRA choice γ_r = alpha / sqrt(r)); peft 0.21.2
`peft/tuners/lora/layer.py` (LoraLayer.update_layer: scaling = lora_alpha / math.sqrt(r) when
use_rslora); the oracle tests compare outputs, gradients and merged weights with LoraConfig(use_rslora=True).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from reference_impls._core import freeze_base, replace_modules
from reference_impls.lora import LoRALinear


@dataclass
class RsLoRAConfig:
    r: int = 8                                   # rank of the update B A
    alpha: float = 8                             # the update is scaled by alpha / sqrt(r)
    target_modules: tuple[str, ...] = ("q", "v")  # roles or module-name suffixes


def rslora_linear(base: nn.Module, r: int, alpha: float) -> LoRALinear:
    layer = LoRALinear(base, r, alpha)
    layer.scaling = alpha / math.sqrt(r)  # the rank-stabilised factor, in place of LoRA's alpha / r
    return layer


def apply(model: nn.Module, config: RsLoRAConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules, lambda t: rslora_linear(t.module, config.r, config.alpha))
    return model
