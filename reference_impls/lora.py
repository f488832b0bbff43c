"""LoRA: Low-Rank Adaptation.

Equation:   h = W0 x + (alpha / r) * B A dropout(x),   A ∈ R^{r × d_in},  B ∈ R^{d_out × r},  W0 frozen
Trainable:  r * (d_in + d_out) per targeted module      (catalog: trainable_params.per_target)
Paper:      "LoRA: Low-Rank Adaptation of Large Language Models", Edward J. Hu et al., 2021 (ICLR 2022),
            arXiv 2106.09685.

Initialisation: B = 0, so B A = 0 and the adapted model starts out equal to the base model (paper §4.1).
The paper draws A from a random Gaussian; A ~ Kaiming-uniform (nn.Linear's init) here is the choice of
the authors' loralib (microsoft/LoRA, loralib/layers.py reset_parameters) and of peft's default
(init_lora_weights=True); either way B = 0 makes the starting point the base model.

Checked against: the paper §4.1 (h = W0 x + ΔW x = W0 x + B A x, scaled by alpha / r; Gaussian A, zero
B); loralib's Linear (scaling alpha / r, merge W += B A * scaling); peft 0.21.2 (the oracle tests compare
outputs and merged weights with LoraModel). After training, W = W0 + (alpha / r) B A can be merged into
the base weight, so inference costs nothing extra.

On GPT-2, q, k and v share one fused Conv1D; LoRA adapts the whole fused module (as peft does), so
d_out there is 3 * d_model. The base layer may be any module with linear_dims(), which is how QLoRA
puts this LoRA on top of a 4-bit layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import AdditiveUpdate, freeze_base, kaiming_uniform_, linear_dims, replace_modules


@dataclass
class LoRAConfig:
    r: int = 8                                   # rank of the update B A
    alpha: float = 8                             # the update is scaled by alpha / r
    dropout: float = 0.0                         # dropout on the input of the low-rank branch
    target_modules: tuple[str, ...] = ("q", "v")  # roles or module-name suffixes (the paper adapts W_q, W_v)


class LoRALinear(AdditiveUpdate):
    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        d_in, d_out = linear_dims(base)
        self.base = base
        self.r, self.scaling = r, alpha / r
        self.A = nn.Parameter(kaiming_uniform_(torch.empty(r, d_in)))  # (r, d_in)
        # zero init: B A = 0, so the wrapped layer starts identical to the base layer
        self.B = nn.Parameter(torch.zeros(d_out, r))  # (d_out, r)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()  # Identity: no copy at p = 0
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * (self.B @ self.A)  # (d_out, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)  # (B, T, d_out)
        if self.merged:
            return h
        z = F.linear(self.dropout(x), self.A)  # x A^T: (B, T, r)
        return h + F.linear(z * self.scaling, self.B)  # z B^T: (B, T, d_out); scaling the narrow z is cheaper



def apply(model: nn.Module, config: LoRAConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules,
                    lambda t: LoRALinear(t.module, config.r, config.alpha, config.dropout))
    return model
