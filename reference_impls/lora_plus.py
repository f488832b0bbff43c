"""LoRA+: LoRA with a larger learning rate for B than for A.

Equation:   h = W0 x + (alpha / r) B A x   (LoRA's layer, reference_impls/lora.py),
            trained with learning rates η_A = η for A and η_B = lr_ratio · η for B
Trainable:  r * (d_in + d_out) per targeted module, as LoRA     (catalog: trainable_params.per_target)
Paper:      "LoRA+: Efficient Low Rank Adaptation of Large Models", Soufiane Hayou et al., 2024 (ICML 2024),
            arXiv 2402.12354.

The model is LoRA's; only the optimiser changes. The paper's analysis of LoRA in the infinite-width limit
shows that one learning rate for A and B cannot give efficient feature learning, because A and B play
asymmetric roles (B starts at zero and multiplies A's output), and sets η_B = λ η_A with λ > 1.

`param_groups(model, lr, lr_ratio)` gives the two optimiser groups. For `_core.train` (Adam, no weight
decay), `training_hooks` applies the ratio instead: Adam's step is lr times a quantity its moment estimates
alone determine, so stretching each step of B by lr_ratio (B ← B_before + λ (B_after − B_before)) is
exactly Adam with B's learning rate multiplied by λ.

Checked against: the paper (η_B = λ η_A, the asymmetry argument); peft 0.21.2 `peft/optimizers/loraplus.py`
(create_loraplus_optimizer: lora_A at lr, lora_B at lr · loraplus_lr_ratio); the oracle test compares a few
Adam steps with peft's optimiser.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from reference_impls.lora import LoRAConfig, LoRALinear, apply as lora_apply


@dataclass
class LoRAPlusConfig:
    r: int = 8                      # rank of B A
    alpha: float = 8                # the update is scaled by alpha / r
    lr_ratio: float = 16            # λ = η_B / η_A
    target_modules: tuple[str, ...] = ("q", "v")


def _factors(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    return [m.A for m in layers], [m.B for m in layers]


def param_groups(model: nn.Module, lr: float, lr_ratio: float) -> list[dict[str, Any]]:
    """Optimiser groups: every A at lr, every B at lr_ratio * lr."""
    A, B = _factors(model)
    return [{"params": A, "lr": lr}, {"params": B, "lr": lr * lr_ratio}]


def training_hooks(model: nn.Module, config: LoRAPlusConfig) -> dict[str, Callable[..., Any]]:
    """For `_core.train`'s Adam: remember B before each step, then stretch B's step by lr_ratio."""
    _, B = _factors(model)
    before: list[torch.Tensor] = []

    def remember_B() -> torch.Tensor:  # runs before backward and the step; adds nothing to the loss
        before[:] = [b.detach().clone() for b in B]
        return torch.zeros((), device=B[0].device)

    @torch.no_grad()
    def stretch_B_step(step: int) -> None:
        for b, b0 in zip(B, before):
            b.copy_(b0 + config.lr_ratio * (b - b0))

    return {"extra_loss": remember_B, "after_step": stretch_B_step}


def apply(model: nn.Module, config: LoRAPlusConfig) -> nn.Module:
    return lora_apply(model, LoRAConfig(r=config.r, alpha=config.alpha, target_modules=config.target_modules))
