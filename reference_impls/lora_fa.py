"""LoRA-FA: LoRA with the down-projection A frozen at its random initialisation; only B is trained.

Equation:   h = W0 x + (alpha / r) * B A x,   A ∈ R^{r × d_in} frozen (random),  B ∈ R^{d_out × r} trained,
            W0 frozen
Trainable:  r * d_out per targeted module      (catalog: trainable_params.per_target)
Paper:      "LoRA-FA: Memory-efficient Low-rank Adaptation for Large Language Models Fine-tuning",
            Longteng Zhang et al., 2023, arXiv 2308.03303 (v1; v2 of 2025 adds gradient corrections, which
            peft implements as an optimizer, peft/optimizers/lorafa.py; not implemented here).

Since A gets no gradient, backward needs only the r-dimensional z = A x (to form ∂L/∂B = g zᵀ), not the
d_in-dimensional input x: that is the paper's activation-memory saving; autograd here keeps exactly z for
B's gradient. Init as LoRA: A ~ Kaiming-uniform, B = 0, so the model starts equal to the base model.

Deviation (reproducibility, not maths): A is drawn from a generator seeded by `init_seed` and the
module's position among the targets (as peft's VeRA seeds its frozen projections), so a saved adapter
holds only B and is restored exactly onto a fresh model. Mergeable like LoRA.

Checked against: the paper's abstract (arXiv 2308.03303 v1 and v2: freeze the projection-down A, train
the projection-up B, no full-rank input activations stored); the method sections were not read here.
peft 0.21.2 (installed in .venv): peft.optimizers.create_lorafa_optimizer freezes every lora_A on a
LoraModel with the scaling alpha / r; the oracle test compares counts and outputs with it. Not
implemented: v2's gradient corrections (that optimizer's projected grad_B = grad_B (A Aᵀ)⁻¹ / scaling²),
which change the optimizer step, not the model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._core import freeze_base, linear_dims, replace_modules
from reference_impls.lora import LoRALinear


@dataclass
class LoRAFAConfig:
    r: int = 8                                    # rank of the update B A
    alpha: float = 16                             # the update is scaled by alpha / r
    target_modules: tuple[str, ...] = ("q", "v")  # roles or module-name suffixes (LoRA's placement)
    init_seed: int = 0                            # seeds the frozen A (module i uses init_seed + i)


class LoRAFALinear(LoRALinear):
    """LoRALinear with A frozen: A is still an nn.Parameter (so it moves with .to() and shows up in the
    state dict) but requires_grad is False, so the optimizer never sees it."""

    def __init__(self, base: nn.Module, r: int, alpha: float, seed: int) -> None:
        super().__init__(base, r, alpha)
        d_in, _ = linear_dims(base)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            # Kaiming-uniform as LoRA (bound 1 / sqrt(d_in) for a = sqrt(5)), drawn from a seeded generator
            bound = 1 / math.sqrt(d_in)
            self.A.copy_((torch.rand(r, d_in, generator=g) * 2 - 1) * bound)  # (r, d_in)
        self.A.requires_grad_(False)  # frozen: the defining change of LoRA-FA
        # B stays zero (LoRALinear): B A = 0 and the wrapped layer starts identical to the base layer


def apply(model: nn.Module, config: LoRAFAConfig) -> nn.Module:
    freeze_base(model)
    counter = iter(range(10**9))
    replace_modules(model, config.target_modules,
                    lambda t: LoRAFALinear(t.module, config.r, config.alpha, config.init_seed + next(counter)))
    return model
