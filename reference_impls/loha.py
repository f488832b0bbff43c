"""LoHa: Low-Rank Hadamard Product (FedPara's parameterisation, as an adapter).

Equation:   h = W0 x + ΔW x,   ΔW = (alpha / r) (B1 A1) ⊙ (B2 A2),   A_i ∈ R^{r × d_in},  B_i ∈ R^{d_out × r}
Trainable:  2 * r * (d_in + d_out) per targeted module      (catalog: trainable_params.per_target)
Paper:      "FedPara: Low-Rank Hadamard Product for Communication-Efficient Federated Learning",
            Nam Hyeon-Woo et al., 2022 (ICLR 2022), arXiv 2108.06098; as a fine-tuning adapter:
            "Navigating Text-To-Image Customization: From LyCORIS Fine-Tuning to Model Evaluation",
            Shih-Ying Yeh et al., 2024 (ICLR 2024), arXiv 2309.14859.

The Hadamard product of two rank-r matrices can have rank up to r², so with twice LoRA's parameters the
update is far less rank-limited (FedPara's rank argument). The update has no low-rank shortcut for x, so it is
formed as a d_out × d_in matrix in every forward pass.

Initialisation (peft's, after FedPara's He init): B1, A1, B2 Kaiming-uniform, A2 = 0, so ΔW = 0 and the
adapted model starts equal to the base model. Training-time regularisers, both off by default:
rank_dropout zeroes whole output rows of ΔW with probability p and rescales the kept rows by
1 / (fraction kept), and module_dropout skips the whole update of a module for a step with probability p.
The update merges into W0.

Checked against: FedPara's low-rank Hadamard product W = (X1 Y1ᵀ) ⊙ (X2 Y2ᵀ); peft 0.21.2 `peft/tuners/loha/layer.py`
(hada_w1_a = B1, hada_w1_b = A1, hada_w2_a = B2, hada_w2_b = A2; scaling alpha / r; the two dropouts).
Unlike peft (nn.Linear only), this also wraps GPT-2's Conv1D.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import AdditiveUpdate, freeze_base, kaiming_uniform_, linear_dims, replace_modules


@dataclass
class LoHaConfig:
    r: int = 8                         # rank of each of the two factors
    alpha: float = 8                   # the update is scaled by alpha / r
    rank_dropout: float = 0.0          # training: drop output rows of ΔW
    module_dropout: float = 0.0        # training: skip the whole update of a module
    target_modules: tuple[str, ...] = ("q", "v")


class LoHaLinear(AdditiveUpdate):
    def __init__(self, base: nn.Module, r: int, alpha: float, rank_dropout: float = 0.0,
                 module_dropout: float = 0.0) -> None:
        super().__init__()
        d_in, d_out = linear_dims(base)
        self.base = base
        self.scaling = alpha / r
        self.rank_dropout, self.module_dropout = rank_dropout, module_dropout
        self.B1 = nn.Parameter(kaiming_uniform_(torch.empty(d_out, r)))  # (d_out, r)
        self.A1 = nn.Parameter(kaiming_uniform_(torch.empty(r, d_in)))   # (r, d_in)
        self.B2 = nn.Parameter(kaiming_uniform_(torch.empty(d_out, r)))  # (d_out, r)
        self.A2 = nn.Parameter(torch.zeros(r, d_in))  # zero: ΔW = 0 at init
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * (self.B1 @ self.A1) * (self.B2 @ self.A2)  # (d_out, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)  # (B, T, d_out)
        if self.merged or (self.training and torch.rand(()) < self.module_dropout):
            return h
        delta = self.delta_weight()
        if self.training and self.rank_dropout > 0:
            keep = (torch.rand(delta.shape[0], device=delta.device) > self.rank_dropout).to(delta.dtype)  # (d_out,)
            delta = delta * (keep / keep.mean().clamp(min=1e-12))[:, None]  # all dropped: ΔW = 0
        return h + F.linear(x, delta)


def apply(model: nn.Module, config: LoHaConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules, lambda t: LoHaLinear(
        t.module, config.r, config.alpha, config.rank_dropout, config.module_dropout))
    return model
