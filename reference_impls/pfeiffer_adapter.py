"""Pfeiffer adapter (AdapterHub `seq_bn`): one bottleneck adapter per block, after the feed-forward sublayer.

Equation:   with h the feed-forward sublayer's output and x its residual input (the block's input to the FFN),
            pre-LN blocks (LLaMA, GPT-2, T5):   y = x + h;      out = y + A(y)
            post-LN blocks (BERT):              y = x + h;      out = LN(y + A(LN(y)))
            A(z) = W_up f(W_down z + b_down) + b_up,  W_down ∈ R^{m × d_model},  W_up ∈ R^{d_model × m},
            m = d_model // reduction_factor, f = ReLU.
            The adapter reads the sublayer's output after its residual connection and original layer norm
            (AdapterHub: original_ln_before=True), adds the FFN output h back as its own residual
            (residual_before_ln=True), and the block's residual and layer norm are applied once more after it
            (original_ln_after=True). On pre-LN blocks that collapses to a residual adapter on the block output.
Trainable:  per layer  2 * d_model * (d_model // reduction_factor) + d_model // reduction_factor + d_model
Paper:      "AdapterFusion: Non-Destructive Task Composition for Transfer Learning", Jonas Pfeiffer et al., 2021
            (EACL 2021), arXiv 2005.00247; Ψ(h, r) = U(ReLU(D(h))) + r, one adapter per layer after the FFN.

Checked against: AdapterHub adapters 1.3.0 (source commit 88f18eb: configuration/adapter_config.py SeqBnConfig,
methods/modeling.py Adapter.pre_forward / forward / post_forward, models/bert and models/llama modeling files):
the placement equations above, and the outputs of `adapters` 1.3.0 (transformers 4.57) on tiny BERT, LLaMA,
GPT-2 and T5 with random adapter weights copied across (max |Δlogits| ≤ 2.4e-6 against changes of ~4 from the
base model; a one-off check, since `adapters` is not a test dependency).
Deviations: AdapterHub's default init draws both projections from N(0, 0.02²); here W_up and b_up start at
zero, so the model starts as the base model. Not mergeable: f sits between the two projections.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from reference_impls._adapters import attach_after_block, blocks
from reference_impls._core import arch_symbols, family, freeze_base
from reference_impls.sequential_adapter import Bottleneck


@dataclass
class PfeifferAdapterConfig:
    reduction_factor: int = 16  # bottleneck m = d_model // reduction_factor (AdapterHub SeqBnConfig)
    activation: str = "relu"    # f between the two projections


class PostLNOutputAdapter(nn.Module):
    """BERT's FFN output sublayer (dense, dropout, residual, LayerNorm) with the Pfeiffer adapter inside it."""

    def __init__(self, base: nn.Module, adapter: nn.Module) -> None:
        super().__init__()
        self.base = base        # BertOutput: dense (d_ff -> d_model), dropout, LayerNorm
        self.adapter = adapter

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        h = self.base.dropout(self.base.dense(hidden_states))  # (B, T, d_model): the FFN output
        y = h + input_tensor                                   # the sublayer's residual connection
        z = self.base.LayerNorm(y)                             # the original output, the adapter's input
        return self.base.LayerNorm(y + self.adapter(z))        # A's residual (h) plus x, then the same LN


def attach(model: nn.Module, make_adapter: Callable[[int], nn.Module]) -> list[nn.Module]:
    """Put one adapter, make_adapter(d_model), after the feed-forward sublayer of every block; returns them."""
    d_model = arch_symbols(model.config)["d_model"]
    adapters = []
    for _, block in blocks(model):
        adapter = make_adapter(d_model)
        if family(model) == "bert":  # post-LN: the adapter sits between the residual add and a second LN pass
            block.output = PostLNOutputAdapter(block.output, adapter)
        else:  # pre-LN: the block output is already x + h, and no layer norm follows inside the block
            attach_after_block(block, "pfeiffer_adapter", adapter, lambda a, y: y + a(y))
        adapters.append(adapter)
    return adapters


def apply(model: nn.Module, config: PfeifferAdapterConfig) -> nn.Module:
    freeze_base(model)
    # Bottleneck zero-inits W_up and b_up: A(z) = 0 at init, so every block's output is unchanged
    attach(model, lambda d: Bottleneck(d, d // config.reduction_factor, config.activation))
    return model
