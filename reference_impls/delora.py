"""DeLoRA: Decoupled Low-rank Adaptation, a LoRA update with normalised rank-1 components and a learnable bound.

Equation:   h = W0 x + ΔW x,   ΔW = (λ / r) · B Ξ A · diag(‖w_1‖, ..., ‖w_{d_in}‖),
            Ξ = diag(1 / (‖a_i‖ ‖b_i‖)),   A ∈ R^{r × d_in} (rows a_i),  B ∈ R^{d_out × r} (columns b_i),
            ‖w_j‖ the norm of input column j of the frozen W0, λ a trainable scalar
Trainable:  r * (d_in + d_out) + 1 per targeted module      (catalog: trainable_params.per_target)
Paper:      "Decoupling Angles and Strength in Low-rank Adaptation", Massimo Bini, Leander Girrbach,
            Zeynep Akata, 2025 (ICLR 2025), arXiv 2503.18225.

Each rank-1 term b_i a_iᵀ / (‖a_i‖ ‖b_i‖) has unit Frobenius norm, so before the column scaling
‖B Ξ A‖_F <= λ: A and B learn only the direction (angle) of the update and λ alone its strength. The scaling
by the column norms of W0 makes the bound relative to the pretrained weight, as in multiplicative fine-tuning.
Norms below 1e-4 are clamped to 1e-4 (peft's guard against dividing by zero).

Initialisation (peft's `init_weights=True`): A Kaiming-uniform, B = 0, λ = delora_lambda; so ΔW = 0 and the
adapted model starts equal to the base model (with B = 0 the clamp keeps Ξ finite). `module_dropout` is
applied as peft 0.21.2 applies it: element-wise dropout on the adapter's input x (peft's help text speaks of
disabling modules). The update is linear in x, so it merges into W0 (the column norms are taken once, at init).

Checked against: the paper's Eq. for ΔW (normalised B, A, bound λ, scaling by ‖W‖) and the authors' README
(ExplainableML/DeLoRA), which points to peft as the maintained implementation; peft 0.21.2
`peft/tuners/delora/layer.py` (DeloraLinear.forward, _compute_delta, reset_delora_parameters): outputs,
gradients, counts and merges agree on tiny Llama, BERT and T5 (test_delora.py). nn.Linear only, as peft.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import AdditiveUpdate, freeze_base, kaiming_uniform_, replace_modules

NORM_FLOOR = 1e-4  # peft clamps ‖a_i‖ and ‖b_i‖ to at least this


@dataclass
class DeloraConfig:
    r: int = 8                         # rank of the update
    delora_lambda: float = 15          # initial value of the trainable bound λ
    module_dropout: float = 0.0        # training: dropout on the adapter's input (peft's behaviour)
    target_modules: tuple[str, ...] = ("q", "v")


class DeloraLinear(AdditiveUpdate):
    def __init__(self, base: nn.Linear, r: int, delora_lambda: float, module_dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise NotImplementedError(f"DeLoRA wraps nn.Linear layers (as peft does), not {type(base).__name__}")
        self.base, self.r = base, r
        self.A = nn.Parameter(kaiming_uniform_(torch.empty(r, base.in_features)))  # (r, d_in)
        self.B = nn.Parameter(torch.zeros(base.out_features, r))  # (d_out, r); zero: ΔW = 0 at init
        self.delora_lambda = nn.Parameter(torch.full((1,), float(delora_lambda)))  # (1,)
        self.register_buffer("w_norm", base.weight.detach().norm(dim=0).clone())  # (d_in,): ‖w_j‖ of W0
        self.dropout = nn.Dropout(module_dropout) if module_dropout > 0 else nn.Identity()
        self.merged = False

    def component_scale(self) -> torch.Tensor:  # (r,): λ / (r ‖a_i‖ ‖b_i‖)
        a_norm = self.A.norm(dim=1).clamp(min=NORM_FLOOR)
        b_norm = self.B.norm(dim=0).clamp(min=NORM_FLOOR)
        return self.delora_lambda / self.r / (a_norm * b_norm)

    def delta_weight(self) -> torch.Tensor:
        return (self.B * self.component_scale()) @ self.A * self.w_norm  # (d_out, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)  # (B, T, d_out)
        if self.merged:
            return h
        z = F.linear(self.dropout(x) * self.w_norm, self.A) * self.component_scale()  # (B, T, r)
        return h + F.linear(z, self.B)


def apply(model: nn.Module, config: DeloraConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules, lambda t: DeloraLinear(
        t.module, config.r, config.delora_lambda, config.module_dropout))
    return model
