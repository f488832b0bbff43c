"""LN Tuning: train only the normalisation layers of a frozen model.

Equation:   RMSNorm(x) = g ⊙ x / sqrt(mean(x²) + ε),   only the gains g of the targeted norms are trained
            (a LayerNorm with a bias trains its weight and bias)
Trainable:  2 * d_model per layer, plus d_model for the final norm      (catalog: trainable_params.per_layer,
            .total; LLaMA's RMSNorms: input_layernorm and post_attention_layernorm in every block, and norm)
Paper:      "Tuning LayerNorm in Attention: Towards Efficient Multi-Modal LLM Finetuning", Bingchen Zhao et al.,
            2024 (ICLR 2024), arXiv 2312.11420.

Each targeted norm is wrapped with a trainable copy of itself; the frozen original stays beside it, so the
model starts equal to the base model and the original can be restored. Merging swaps the tuned copy into the
base slot (nothing to fold: the tuned norm simply replaces the old one), unmerging swaps it back.

Scope: the catalog's count and defaults are LLaMA's (RMSNorm, gain only, two norms per block), so this
implementation is for LLaMA-family decoders; the paper also trains the vision-language connector, the
embeddings and the output head of its multi-modal models, which peft's LN Tuning (and this file) leave out.

Checked against: the paper (tuning the LayerNorm of each attention block); peft 0.21.2
`peft/tuners/ln_tuning/layer.py` (a deep copy of each targeted norm trained in its place, merge = swap) and
the LLaMA target names of TRANSFORMERS_MODELS_TO_LNTUNING_TARGET_MODULES_MAPPING.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._core import Wrapper, family, freeze_base, matches, replace_module


@dataclass
class LNTuningConfig:
    target_modules: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm", "norm")  # LLaMA's norms


class TunedNorm(Wrapper):
    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base                                    # the frozen original
        self.tuned = copy.deepcopy(base).requires_grad_(True)  # starts as an exact copy: same outputs
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_model)
        return self.base(x) if self.merged else self.tuned(x)

    def merge(self) -> None:
        if not self.merged:
            self.base, self.tuned = self.tuned, self.base  # the tuned norm takes the base slot
            self.merged = True

    def unmerge(self) -> None:
        if self.merged:
            self.base, self.tuned = self.tuned, self.base
            self.merged = False


def apply(model: nn.Module, config: LNTuningConfig) -> nn.Module:
    if family(model) != "llama":
        raise ValueError(f"LN Tuning's targets and count are LLaMA's (RMSNorm gains); this is a {family(model)} model")
    freeze_base(model)
    names = [name for name, _ in model.named_modules() if any(matches(name, t) for t in config.target_modules)]
    if not names:
        raise ValueError(f"no module of this model matches {list(config.target_modules)}")
    for name in names:
        replace_module(model, name, TunedNorm(model.get_submodule(name)))
    return model
