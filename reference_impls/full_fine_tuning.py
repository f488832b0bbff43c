"""Full fine-tuning: the baseline every PEFT method is compared against.

Equation:   θ ← θ - η ∇_θ L(θ)  for every parameter θ of the model
Trainable:  n_params, all parameters of the base model (catalog: trainable_params.total)
Paper:      none; the pretrain-then-fine-tune practice for Transformers (BERT, GPT, 2018) is the baseline of
            the survey's experiments (Xu et al., arXiv 2312.12148).

Nothing is added, so there is nothing to merge: the trained weights are the model.

Checked against: nothing beyond its definition (no method paper; peft has no tuner for it). apply()
unfreezes every parameter, including any an earlier step froze. Numeric pin: test_full_fine_tuning.py
checks that the trainable count is the model's parameter count and that one SGD step moves every
parameter by −η ∇θ L.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass
class FullFineTuningConfig:
    pass  # the baseline has no hyperparameters


def apply(model: nn.Module, config: FullFineTuningConfig) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(True)
    return model
