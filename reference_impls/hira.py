"""HiRA: Hadamard High-Rank Adaptation.

Equation:   h = W0 x + ΔW dropout(x),   ΔW = W0 ⊙ (B A),   A ∈ R^{r × d_in},  B ∈ R^{d_out × r},  W0 frozen
Trainable:  r * (d_in + d_out) per targeted module      (catalog: trainable_params.per_target)
Paper:      "HiRA: Parameter-Efficient Hadamard High-Rank Adaptation for Large Language Models",
            Qiushi Huang et al., 2025 (ICLR 2025), OpenReview TwJrTz9cRS (no arXiv version; see the catalog).

LoRA's factors, but multiplied element-wise with the frozen weight: rank(W0 ⊙ B A) can reach
rank(W0) · r, so with LoRA's parameter count the update is high-rank and shaped by the pretrained weight.
There is no alpha / r scaling (peft has none for HiRA).

Initialisation (peft's default): A Kaiming-uniform, B = 0, so ΔW = 0 and the model starts unchanged. The
update is a plain matrix and merges into W0.

Checked against: the paper (ΔW = W0 ⊙ (B A)); peft 0.21.2 `peft/tuners/hira/layer.py` (hira_A (r, d_in),
hira_B (d_out, r), forward F.linear(dropout(x), W0 * (B A)), merge W0 + W0 * (B A)).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import AdditiveUpdate, freeze_base, kaiming_uniform_, linear_dims, linear_weight, replace_modules


@dataclass
class HiRAConfig:
    r: int = 32                      # rank of B A
    dropout: float = 0.0             # dropout on the input of the HiRA branch
    target_modules: tuple[str, ...] = ("q", "v")


class HiRALinear(AdditiveUpdate):
    def __init__(self, base: nn.Module, r: int, dropout: float = 0.0) -> None:
        super().__init__()
        d_in, d_out = linear_dims(base)
        self.base = base
        self.A = nn.Parameter(kaiming_uniform_(torch.empty(r, d_in)))  # (r, d_in)
        self.B = nn.Parameter(torch.zeros(d_out, r))  # (d_out, r); zero: ΔW = 0 at init
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        return linear_weight(self.base) * (self.B @ self.A)  # W0 ⊙ B A: (d_out, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)
        return h if self.merged else h + F.linear(self.dropout(x), self.delta_weight())

    @torch.no_grad()
    def unmerge(self) -> None:
        """merge (AdditiveUpdate's) wrote W = W0 + W0 ⊙ B A = W0 ⊙ (1 + B A); ΔW depends on W0, so undo it by
        division (exact up to rounding while no entry of B A is -1)."""
        if self.merged:
            W = linear_weight(self.base)
            W.div_(1 + self.B @ self.A)
            self.merged = False


def apply(model: nn.Module, config: HiRAConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules, lambda t: HiRALinear(t.module, config.r, config.dropout))
    return model
