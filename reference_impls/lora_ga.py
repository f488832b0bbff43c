"""LoRA-GA: LoRA initialised from the gradient, so that its first step follows full fine-tuning's.

Equation:   G = mean over the data of ∂L/∂W0  (d_out × d_in),  G = U S Vᵀ  (SVD)
            A = V_{:, 1..r}ᵀ,  B = ζ U_{:, r+1..2r} S_{r+1..2r},  ζ = d_out^{1/4} / sqrt(γ)   (direction ArB2r,
            "stable" scale),  W0' = W0 − (alpha / r) B A,   h = W0' x + (alpha / r) B A x
Trainable:  r * (d_in + d_out) per targeted module, as LoRA     (catalog: trainable_params.per_target)
Paper:      "LoRA-GA: Low-Rank Adaptation with Gradient Approximation", Shaowen Wang et al., 2024
            (NeurIPS 2024), arXiv 2407.05000.

The model is LoRA's layer (reference_impls/lora.py) with a different start: A and B come from the singular
vectors of the full-weight gradient, so that the change of B A in the first steps best approximates the
full fine-tuning step −η G, and the frozen weight is offset by the initial product so that the adapted
model still starts equal to the base model. The stable scale ζ keeps the output variance independent of
the rank (paper, with γ = stable_gamma).

direction chooses which singular components go where: ArB2r (peft's default) A ← components 1..r and
B ← r+1..2r; A2rBr the reverse; ArBr odd components to A and even ones to B; random a random half of the
first 2r, the same for both. peft also offers other scales (weight_svd, gd_scale, unit); the catalog records
the stable one, which is implemented here.

Data: pass `data` (an iterable of batches with labels) to apply(); without it the gradient is estimated on
the built-in synthetic task (_core.synthetic_batch), which is only meaningful for tests.

Checked against: the paper (gradient SVD init, the stable scale, the offset of W0); peft 0.21.2
`peft/tuners/lora/loraga.py` (estimate_gradients: the gradient of each target weight averaged over the
backward passes) and `peft/tuners/lora/layer.py` (lora_ga_init: the four directions, ζ = d_out^{1/4} /
sqrt(stable_gamma), W0 − scaling · B A). peft takes a randomised SVD (torch.svd_lowrank); this file the exact
one, so the singular vectors agree with peft's up to sign (test_lora_ga.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from reference_impls._core import find_targets, linear_dims, linear_weight, synthetic_batch
from reference_impls.lora import LoRAConfig, LoRALinear, apply as lora_apply

Batch = dict[str, torch.Tensor]
DIRECTIONS = ("ArB2r", "A2rBr", "ArBr", "random")


@dataclass
class LoRAGAConfig:
    r: int = 8                       # rank of B A
    alpha: float = 8                 # the update is scaled by alpha / r
    direction: str = "ArB2r"         # which singular components initialise A and B
    stable_gamma: int = 16           # γ of the stable scale ζ = d_out^{1/4} / sqrt(γ)
    target_modules: tuple[str, ...] = ("q", "v")


def estimate_gradients(model: nn.Module, names: list[str], data: Iterable[Batch]) -> dict[str, torch.Tensor]:
    """Module name -> ∂L/∂W (d_out, d_in) averaged over the batches, with every other parameter frozen."""
    weights = {name: linear_weight(model.get_submodule(name)) for name in names}
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    params = [model.get_submodule(name).weight for name in names]
    for p in params:
        p.requires_grad_(True)
    was_training = model.training
    model.train()
    total = {name: torch.zeros_like(w) for name, w in weights.items()}
    n = 0
    for batch in data:
        grads = torch.autograd.grad(model(**batch).loss, params)
        for name, g in zip(names, grads):
            total[name] += g.T if isinstance(model.get_submodule(name), Conv1D) else g  # Conv1D stores Wᵀ
        n += 1
    model.train(was_training)
    for p, flag in flags.items():
        p.requires_grad_(flag)
    if n == 0:
        raise ValueError("LoRA-GA needs at least one batch to estimate the gradient")
    return {name: t / n for name, t in total.items()}


@torch.no_grad()
def init_from_gradient(layer: LoRALinear, G: torch.Tensor, direction: str, stable_gamma: float) -> None:
    r = layer.r
    U, S, Vh = torch.linalg.svd(G.float(), full_matrices=False)  # G = U diag(S) Vh
    if direction == "ArB2r":
        a, b = torch.arange(r), torch.arange(r, 2 * r)
    elif direction == "A2rBr":
        a, b = torch.arange(r, 2 * r), torch.arange(r)
    elif direction == "ArBr":
        a, b = torch.arange(1, 2 * r, 2), torch.arange(0, 2 * r, 2)
    else:  # random: the same random half of the first 2r components for both
        a = b = torch.randperm(2 * r)[:r]
    d_out = G.shape[0]
    zeta = d_out ** 0.25 / stable_gamma ** 0.5
    layer.A.copy_(Vh[a])                          # (r, d_in)
    layer.B.copy_(zeta * U[:, b] * S[b])          # (d_out, r)
    linear_weight(layer.base).sub_(layer.delta_weight())  # W0' = W0 − s B A: the model starts unchanged


def apply(model: nn.Module, config: LoRAGAConfig, data: Iterable[Batch] | None = None) -> nn.Module:
    if config.direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got '{config.direction}'")
    names = [t.name for t in find_targets(model, config.target_modules)]
    for name in names:
        d_in, d_out = linear_dims(model.get_submodule(name))
        if 2 * config.r > min(d_in, d_out):
            raise ValueError(f"LoRA-GA takes 2r = {2 * config.r} singular vectors, more than {name} has "
                             f"({min(d_in, d_out)})")
    data = data if data is not None else [synthetic_batch(model)]
    grads = estimate_gradients(model, names, data)
    lora_apply(model, LoRAConfig(r=config.r, alpha=config.alpha, target_modules=config.target_modules))
    for name in names:
        init_from_gradient(model.get_submodule(name), grads[name], config.direction, config.stable_gamma)
    return model
