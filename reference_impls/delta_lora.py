"""Delta-LoRA: LoRA whose frozen weight W is also moved by the change of the low-rank product.

Equation:   h = W^(t) x + (alpha / r) * B A x,   A ∈ R^{r × d_in},  B ∈ R^{d_out × r}
            after every optimizer step t (once t >= start_step, the paper's K):
            W^(t+1) = W^(t) + λ * (alpha / r) * (B^(t+1) A^(t+1) - B^(t) A^(t)),   λ = update_ratio
Trainable:  r * (d_in + d_out) per targeted module (A and B; W gets no gradient and no optimizer state)
            (catalog: trainable_params.per_target)
Paper:      "Delta-LoRA: Fine-Tuning High-Rank Parameters with the Delta of Low-Rank Matrices", Bojia Zi
            et al., 2023, arXiv 2309.02411.

W is updated in place by `training_hooks(...)["after_step"]` (no autograd): the change of the product is
what the paper shows is proportional to the gradient of W under plain SGD, so W learns without its
gradient or Adam state being stored. As in the paper the low-rank branch has no dropout (so that the
delta follows the gradient direction). Init as LoRA (A ~ Kaiming-uniform, B = 0: starts equal to the base
model). Mergeable like LoRA: merge() adds (alpha / r) B A to the current W^(t). The paper's notation
writes the product as A B with A ∈ R^{d × r}; here B A with B ∈ R^{d_out × r}, as in lora.py.

Checked against: the paper's abstract (W is updated by the delta of the product, A^(t+1) B^(t+1) −
A^(t) B^(t), without W's gradient or momentum) and, from the paper's method, the update ratio λ, the start
step K and the dropout-free branch as stated above; whether the paper's delta carries LoRA's alpha / r
(here it does: the delta of the scaled product, which is what the layer adds to its output) was not
re-verified in this pass. No authors' code was consulted; peft has no Delta-LoRA. Numeric pins:
test_delta_lora.py checks W^(t+1) − W^(t) = λ (P^(t+1) − P^(t)) step by step, nothing before K, and the
telescoped sum since K.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._core import freeze_base, linear_weight, replace_modules
from reference_impls.lora import LoRALinear


@dataclass
class DeltaLoRAConfig:
    r: int = 8                                    # rank of the LoRA factors
    alpha: float = 16                             # the LoRA update is scaled by alpha / r
    update_ratio: float = 2.0                     # λ: how strongly the delta of B A is added to W
    start_step: int = 500                         # K: optimizer steps before W starts being updated
    target_modules: tuple[str, ...] = ("q", "v")  # roles or module-name suffixes (LoRA's placement)


class DeltaLoRALinear(LoRALinear):
    """LoRALinear (no dropout) whose base weight the training hook moves; nothing else differs."""


def delta_layers(model: nn.Module) -> list[DeltaLoRALinear]:
    return [m for m in model.modules() if isinstance(m, DeltaLoRALinear)]


class DeltaUpdater:
    """Remembers (alpha / r) B^(t) A^(t) of every layer and adds λ times its change to W after each step.

    The previous products are plain tensors held here, not buffers: they are optimizer-side state, not
    part of the model (and a saved model needs W and the factors only).
    """

    def __init__(self, model: nn.Module, config: DeltaLoRAConfig) -> None:
        self.layers = delta_layers(model)
        self.c = config
        self.previous = [m.delta_weight().detach().clone() for m in self.layers]  # (d_out, d_in) each

    @torch.no_grad()
    def step(self, step: int) -> None:
        """Call after optimizer step `step` (0-based): step + 1 optimizer steps have been taken."""
        for i, m in enumerate(self.layers):
            now = m.delta_weight()  # (alpha / r) B^(t+1) A^(t+1): (d_out, d_in)
            if step >= self.c.start_step and not m.merged:
                linear_weight(m.base).add_(self.c.update_ratio * (now - self.previous[i]))
            self.previous[i] = now


def training_hooks(model: nn.Module, config: DeltaLoRAConfig) -> dict:
    """`after_step` for _core.train: the delta update of W."""
    return {"after_step": DeltaUpdater(model, config).step}


def apply(model: nn.Module, config: DeltaLoRAConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules,
                    lambda t: DeltaLoRALinear(t.module, config.r, config.alpha, dropout=0.0))
    return model
