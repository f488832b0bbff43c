"""BEFT: Bias-Efficient Fine-Tuning (train only the bias of the value projections).

Equation:   v = W_v x + b_v + Δb_v,   Δb_v ∈ R^{d_out} trainable, everything else frozen
Trainable:  d_out per targeted module (the value projections)      (catalog: trainable_params.per_target)
Paper:      "BEFT: Bias-Efficient Fine-Tuning of Language Models in Low-Data Regimes", Baichuan Huang et al.,
            2026 (ACL 2026), arXiv 2509.15974.

BitFit trains every bias; the paper compares tuning only the query, key or value projection's bias and finds
the value bias the one to tune in low-data regimes. As in peft, the change is a separate zero-initialised
vector added to the projection's output, so bias-free projections (LLaMA, T5) get one too and the model
starts unchanged. Merging folds Δb_v into the layer's bias where it has one; a bias-free layer has nothing to
fold into and keeps adding the vector (peft refuses to merge there).

Checked against: the paper (tuning b_v alone); peft 0.21.2 `peft/tuners/beft/layer.py` (beft_bias of shape
(1, d_out), zero init, added to the base output, merge into base_layer.bias). Unlike peft (nn.Linear only),
this also wraps GPT-2's fused q|k|v Conv1D, whose whole output gets the shift (as LoRA adapts the whole fused
module), so d_out there is 3 * d_model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._core import Wrapper, freeze_base, linear_dims, replace_modules


@dataclass
class BEFTConfig:
    target_modules: tuple[str, ...] = ("v",)  # projections whose bias is tuned


class BEFTLinear(Wrapper):
    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.delta_b = nn.Parameter(torch.zeros(linear_dims(base)[1]))  # (d_out,); zero: starts unchanged
        self.merged = False

    def _foldable(self) -> bool:
        return getattr(self.base, "bias", None) is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)
        return h if self.merged and self._foldable() else h + self.delta_b

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            if self._foldable():
                self.base.bias.add_(self.delta_b)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            if self._foldable():
                self.base.bias.sub_(self.delta_b)
            self.merged = False


def apply(model: nn.Module, config: BEFTConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules, lambda t: BEFTLinear(t.module))
    return model
