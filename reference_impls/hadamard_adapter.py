"""Hadamard adapter: an element-wise affine map of every self-attention output, plus that layer's norm.

Equation:   A' = W ⊙ A + b,   W, b ∈ R^{d_model},   A = Concat_h(softmax(Q_h K_h^T / sqrt(d_k)) V_h)
            the self-attention output of each layer, before the attention's output projection; the layer
            norm that follows the self-attention sublayer is unfrozen (paper Sec. 4, Fig. 3).
Trainable:  4 * d_model per layer: W and b (2 * d_model) and the gain and bias of that layer norm
            (2 * d_model)                                                      (catalog: per_layer)
Paper:      "Hadamard Adapter: An Extreme Parameter-Efficient Adapter Tuning Method for Pre-trained
            Language Models", Yuyan Chen et al., 2023 (CIKM 2023), arXiv 2407.11033.

Count check against the paper: 4 * d_model per layer gives 12 * 4 * 768 = 36,864 parameters on
BERT-base (110M), the 0.033% the paper reports; 2 * d_model alone would be 0.017%.

Init (paper): W = 1, b = 0, so A' = A and the model starts equal to the base model.
Mergeable: W_o (W ⊙ A + b) + b_o = (W_o diag(W)) A + (W_o b + b_o), so merge() scales the columns of the
output projection and moves b into its bias (the projection needs a bias: BERT and GPT-2 have one, LLaMA
does not, and LLaMA's RMSNorm has no bias either, so this file supports BERT-style and GPT-2 models).
The unfrozen layer norm is trained as a copy of the base one (as peft's modules_to_save does): the
frozen original stays in place as `base`, merge() writes the trained gain and bias into it and unmerge()
restores the original. Layer norm after self-attention: BERT's attention.output.LayerNorm (post-LN);
in GPT-2 (pre-LN) ln_2, the norm between the attention and the FFN.
Not implemented: the paper's first step (training the task classifier alone before the adapter; our
tiny models keep their pretrained LM head frozen) and its removal of adapters from redundant layers.

Checked against: the paper as cited in the text above (Sec. 4 and Fig. 3 for the placement on the
self-attention output and the unfrozen layer norm; the 0.033% count on BERT-base, which the catalog test
reproduces). This pass did not re-read the paper beyond those points and found no released code to
compare with; peft has no Hadamard adapter. Numeric pins: test_hadamard_adapter.py re-computes
LayerNorm(W_o (W ⊙ A + b) + b_o + x) by hand and the merged projection W_o diag(W), W_o b + b_o.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import (Wrapper, family, find_targets, freeze_base, linear_weight, matches,
                                   replace_module)

#: family -> the layer norm that follows the self-attention sublayer
NORM_AFTER_ATTENTION = {"bert": "attention.output.LayerNorm", "gpt2": "ln_2"}


@dataclass
class HadamardAdapterConfig:
    target_modules: tuple[str, ...] = ("o",)  # the attention output projection, whose input is A
    train_norm: bool = True                   # unfreeze the layer norm after self-attention (paper: yes)


class HadamardLinear(Wrapper):
    """The attention output projection applied to W ⊙ A + b."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        if base.bias is None:
            raise ValueError("the Hadamard adapter merges into the output projection's bias; this one has none")
        self.base = base
        d = linear_weight(base).shape[1]  # d_in of the projection = d_model (the concatenated heads)
        # ones / zeros (paper): A' = A at init, so the model starts equal to the base model
        self.W = nn.Parameter(torch.ones(d))   # (d_model,)
        self.b = nn.Parameter(torch.zeros(d))  # (d_model,)
        self.merged = False

    def forward(self, A: torch.Tensor) -> torch.Tensor:  # A: (B, T, d_model)
        return self.base(A) if self.merged else self.base(self.W * A + self.b)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            Wo = linear_weight(self.base)           # (d_out, d_model) view
            self.base.bias.add_(Wo @ self.b)        # b_o + W_o b, with the original W_o
            Wo.mul_(self.W[None, :])                # W_o diag(W)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            Wo = linear_weight(self.base)
            Wo.div_(self.W[None, :])
            self.base.bias.sub_(Wo @ self.b)
            self.merged = False


class TrainedLayerNorm(nn.Module):
    """A trainable copy of a frozen LayerNorm's gain and bias; the original stays in `base`."""

    def __init__(self, base: nn.LayerNorm) -> None:
        super().__init__()
        self.base = base
        # copies of the pretrained values: the model starts equal to the base model
        self.weight = nn.Parameter(base.weight.detach().clone())  # (d_model,)
        self.bias = nn.Parameter(base.bias.detach().clone())      # (d_model,)
        self.merged = False
        self._original: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_model)
        if self.merged:
            return self.base(x)
        return F.layer_norm(x, self.base.normalized_shape, self.weight, self.bias, self.base.eps)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self._original = (self.base.weight.clone(), self.base.bias.clone())
            self.base.weight.copy_(self.weight)
            self.base.bias.copy_(self.bias)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight.copy_(self._original[0])
            self.base.bias.copy_(self._original[1])
            self._original, self.merged = None, False


def apply(model: nn.Module, config: HadamardAdapterConfig) -> nn.Module:
    freeze_base(model)
    fam = family(model)
    if fam not in NORM_AFTER_ATTENTION:
        raise ValueError(f"hadamard-adapter supports BERT-style and GPT-2 models, not {fam}")
    for t in find_targets(model, config.target_modules):
        replace_module(model, t.name, HadamardLinear(t.module))
    if config.train_norm:
        norms = [(n, m) for n, m in model.named_modules() if matches(n, NORM_AFTER_ATTENTION[fam])]
        for name, norm in norms:
            replace_module(model, name, TrainedLayerNorm(norm))
    return model
