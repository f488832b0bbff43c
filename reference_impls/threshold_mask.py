"""Threshold-Mask: learn a binary mask over frozen pretrained weights (Masking as an alternative to fine-tuning).

Equation:   h = (W ⊙ M) x + b,      M_ij = 1[s_ij > τ],   s ∈ R^{d_out × d_in} real-valued scores
            forward uses the binary M; backward uses the straight-through estimator ∂L/∂s := ∂L/∂M
            (so ∂L/∂s_ij = (∂L/∂W'_ij) · W_ij with W' = W ⊙ M); W and b stay frozen
Trainable:  d_in * d_out per masked linear layer   (catalog: trainable_params.per_target), the scores;
            afterwards only the binary mask is kept (d_in * d_out bits)
Paper:      "Masking as an Efficient Alternative to Finetuning for Pretrained Language Models",
            Mengjie Zhao, Tao Lin, Fei Mi, Martin Jaggi, Hinrich Schütze, 2020 (EMNLP 2020), arXiv 2004.12406.

Scores are initialised uniformly on [-c, (c + τ) / init_sparsity - c), c = init_scale, so that an
init_sparsity share of them starts at or below the threshold (the authors' get_init_scales for
MaskedLinear1); with init_sparsity = 0 every score starts at 2τ and the model starts equal to the base
model. Biases are not
masked. The paper also trains a new classifier head, which the tiny LM heads here do not need.
GPT-2's fused c_attn is masked as a whole module (q, k and v together). merge() writes W ⊙ M into the
layer and keeps W aside so that unmerge() can restore it: the pretrained values never change, so one model
plus one bit mask per task serves many tasks.

Checked against: the authors' code github.com/ptlmasking/maskbert @8d6d8df8, code/masking/maskers.py
(binarizer_fn1: mask 0 where s <= τ, 1 where s > τ; _Binarizer1.backward passes the gradient straight
through; MaskedLinear1.forward = F.linear(x, W ⊙ M_w, b), biases unmasked by default (mask_biases False);
get_init_scales("MaskedLinear1") = (-init_scale, (init_scale + τ) / init_sparsity - init_scale)) and
code/parameters.py (threshold 1e-2, init_scale 2e-2). The paper's abstract was read, not its method
section. Not implemented: the authors' masking schedule (sparsity_control.py) and their structured and
controlled-init variants.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._core import Target, Wrapper, freeze_base, linear_dims, linear_weight, replace_modules


@dataclass
class ThresholdMaskConfig:
    threshold: float = 0.01       # τ: scores above it keep their weight (mask 1), the rest zero it
    init_sparsity: float = 0.05   # share of weights masked out at initialisation
    init_scale: float = 0.02      # c: scores start in U[-c, (c + τ) / init_sparsity - c) (authors' init_scale)
    target_modules: tuple[str, ...] = ("q", "k", "v", "o", "up", "down")  # linear layers whose weights are masked


class BinarizeSTE(torch.autograd.Function):
    """M = 1[s > τ] forward; identity backward (straight-through estimator)."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, threshold: float) -> torch.Tensor:
        return (s > threshold).to(s.dtype)

    @staticmethod
    def backward(ctx, grad_M: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad_M, None


class ThresholdMaskLinear(Wrapper):
    def __init__(self, base: nn.Module, threshold: float, init_sparsity: float, init_scale: float = 0.0) -> None:
        super().__init__()
        d_in, d_out = linear_dims(base)
        self.base = base
        self.threshold = threshold
        if init_sparsity > 0:
            # U[-c, (c + τ) / ρ - c): P(s <= τ) = (τ + c) / ((c + τ) / ρ) = ρ, the initial mask sparsity
            hi = (init_scale + threshold) / init_sparsity - init_scale
            s = torch.empty(d_out, d_in).uniform_(-init_scale, hi)  # (d_out, d_in)
        else:
            s = torch.full((d_out, d_in), 2 * threshold)  # every weight kept: starts equal to the base layer
        self.scores = nn.Parameter(s.to(linear_weight(base).dtype))  # (d_out, d_in)
        self.merged = False
        self._W: torch.Tensor | None = None  # the unmasked W while merged

    def mask(self) -> torch.Tensor:  # (d_out, d_in), 0/1
        return BinarizeSTE.apply(self.scores, self.threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        if self.merged:
            return self.base(x)
        W = linear_weight(self.base) * self.mask()  # (d_out, d_in)
        return nn.functional.linear(x, W, self.base.bias)  # (B, T, d_out)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            W = linear_weight(self.base)
            self._W = W.clone()
            W.mul_(self.mask())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            linear_weight(self.base).copy_(self._W)
            self._W, self.merged = None, False


def apply(model: nn.Module, config: ThresholdMaskConfig) -> nn.Module:
    freeze_base(model)

    def wrap(t: Target) -> nn.Module:
        return ThresholdMaskLinear(t.module, config.threshold, config.init_sparsity, config.init_scale)

    replace_modules(model, config.target_modules, wrap)
    return model
