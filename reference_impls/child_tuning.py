"""Child-Tuning: update only a "child network" of the weights by masking gradients in the backward pass.

Equation:   w ← w - η · (M ⊙ ∂L/∂w) / s      (with Adam, M ⊙ ∂L/∂w / s is the gradient Adam sees)
            Child-Tuning_F (task-free):   M ~ Bernoulli(p_F), drawn afresh at every step;  s = p_F
            Child-Tuning_D (task-driven): M = 1[F(w) among the top p_D share of all F],  s = 1, fixed;
                                          F(w) = mean over batches of (∂L/∂w)²  (diagonal Fisher information)
Trainable:  n_params: every weight may change (catalog: trainable_params.total); each step updates about
            reserve_p of them (F), or always the same n_params * reserve_p entries (D).
Paper:      "Raise a Child in Large Language Model: Towards Effective and Generalizable Fine-tuning",
            Runxin Xu et al., 2021 (EMNLP 2021), arXiv 2109.05687.

Implemented as gradient hooks, so any optimizer works unchanged (the authors wrap AdamW instead; the
effect on the gradient is the same). Deviation: in mode D the authors' code computes the Fisher
information and masks only parameters whose name contains 'layer' (the encoder layers), training
embeddings and the task head fully; here every parameter is masked (mode F masks every parameter in
both). Mode D needs data: pass `data` (an iterable of batches) to apply(). Mergeable trivially: no
module is added.

Checked against: the authors' code github.com/alibaba/AliceMind @a6d5afe5 (ChildTuning/
ChildTuningOptimizer.py: F multiplies the gradient by a fresh Bernoulli(reserve_p) sample / reserve_p at
every step, D by the fixed 0/1 mask, no rescaling; ChildTuningD.py: F(w) = Σ_batches grad² / N, the
threshold is the (1 - reserve_p) percentile over all masked parameters together, mask = F >= threshold).
Simplification: the authors clip each parameter's gradient to max_grad_norm before squaring it; here the
raw gradient is squared. The paper's text was not re-read in this pass. peft has no Child-Tuning.
Numeric pins: test_child_tuning.py checks the 1/p rescaling and the Bernoulli share (F) and re-computes
the Fisher information and its global top-p mask by hand (D).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn


@dataclass
class ChildTuningConfig:
    mode: str = "F"          # F: task-free random mask every step; D: task-driven Fisher mask
    reserve_p: float = 0.3   # share of gradient entries kept (p_F or p_D)


def fisher_masks(model: nn.Module, data: Iterable[dict[str, torch.Tensor]], reserve_p: float) -> dict[str, torch.Tensor]:
    """Mask of the top reserve_p share of weights by diagonal Fisher information, over the whole model."""
    params = dict(model.named_parameters())
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    n_batches = 0
    for batch in data:
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        for n, p in params.items():
            if p.grad is not None:
                fisher[n] += p.grad.detach() ** 2
        n_batches += 1
    model.zero_grad(set_to_none=True)
    fisher = {n: f / max(n_batches, 1) for n, f in fisher.items()}
    scores = torch.cat([f.flatten() for f in fisher.values()])  # (n_params,)
    threshold = scores.topk(max(1, round(reserve_p * scores.numel()))).values[-1]
    return {n: f >= threshold for n, f in fisher.items()}


def apply(model: nn.Module, config: ChildTuningConfig,
          data: Iterable[dict[str, torch.Tensor]] | None = None) -> nn.Module:
    p = config.reserve_p
    for param in model.parameters():
        param.requires_grad_(True)
    if config.mode == "F":
        for param in model.parameters():
            # a fresh Bernoulli(p) mask at every backward pass; dividing by p keeps the gradient unbiased
            param.register_hook(lambda g: g * torch.bernoulli(torch.full_like(g, p)) / p)
    elif config.mode == "D":
        if data is None:
            raise ValueError("Child-Tuning_D needs `data` (batches) to compute the Fisher information")
        masks = fisher_masks(model, data, p)
        for name, param in model.named_parameters():
            mask = masks[name].to(param.dtype)
            param.register_hook(lambda g, mask=mask: g * mask)
    else:
        raise ValueError(f"unknown mode '{config.mode}'; use F or D")
    return model
