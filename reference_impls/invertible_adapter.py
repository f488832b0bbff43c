"""Invertible adapter (MAD-X language adapter, AdapterHub `seq_bn_inv`): Pfeiffer adapters plus a NICE coupling
block on the embeddings, run forward on the input embeddings and inverted before the output embedding layer.

Equation:   the coupling splits a vector e ∈ R^d into halves e1 = e[:d/2], e2 = e[d/2:] and computes
                forward:  o1 = e1 + F(e2),   o2 = e2 + G(o1),     A_inv(e) = [o1, o2]
                inverse:  e2 = o2 − G(o1),   e1 = o1 − F(e2),     A_inv⁻¹(o) = [e1, e2]
            F, G: R^{d/2} -> R^{d/2}, each Linear(d/2, (d/2)//inv_reduction_factor), f = ReLU, Linear back.
            The embedding output (the input of the first block) becomes A_inv(e); the input of the output
            embedding layer (the LM head's last linear map) becomes A_inv⁻¹(h). One block of F, G serves both.
            Every block also gets the Pfeiffer adapter of pfeiffer_adapter.py.
Trainable:  per layer  2 * d_model * (d_model // reduction_factor) + d_model // reduction_factor + d_model
            total      4 * (d_model // 2) * (d_model // (2 * inv_reduction_factor))
                       + 2 * (d_model // (2 * inv_reduction_factor)) + 2 * (d_model // 2)     (even d_model)
Paper:      "MAD-X: An Adapter-Based Framework for Multi-Task Cross-Lingual Transfer", Jonas Pfeiffer, Ivan Vulić,
            Iryna Gurevych, Sebastian Ruder, 2020 (EMNLP 2020), arXiv 2005.00052 (its invertible adapters).

Checked against: AdapterHub adapters 1.3.0 (source commit 88f18eb: SeqBnInvConfig, inv_adapter="nice",
inv_adapter_reduction_factor=2; methods/modeling.py NICECouplingBlock; models/*: the forward pass runs after the
embedding layer, BERT's embeddings module, GPT-2's embedding dropout, LLaMA's embed_tokens, T5's encoder embedding
dropout, and heads/language_modeling.py runs the inverse right before the output embedding): the equations and
count above, and a one-off comparison with `adapters` 1.3.0 (transformers 4.57): its NICECouplingBlock with the
same random F, G weights gives bitwise the same forward and inverse outputs, and its seq_bn_inv model on tiny LLaMA
and BERT (random weights copied across) has the same trainable count (1,664) and the same logits (max |Δ| ≤ 2e-6)
once our inverse hook is removed: `adapters.init` on a plain HF LM head does not run the inverse (only its own
flexible-head LM head does), and with the inverse the logits differ by 2 to 7, so the inverse is checked here by
test_invertible_adapter.py only.
Deviations: AdapterHub draws all weights from N(0, 0.02²); here the last linear layer of F and of G and the
Pfeiffer up-projections start at zero, so F = G = 0, A_inv is the identity and the model starts as the base
model. On T5 the coupling acts on the encoder's input only (as AdapterHub's T5 stack). Not mergeable.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._adapters import blocks
from reference_impls._core import arch_symbols, freeze_base
from reference_impls.pfeiffer_adapter import attach
from reference_impls.sequential_adapter import ACTIVATIONS, Bottleneck


@dataclass
class InvertibleAdapterConfig:
    reduction_factor: int = 16     # per-block adapters: bottleneck d_model // reduction_factor
    inv_reduction_factor: int = 2  # F and G: hidden size (d_model / 2) // inv_reduction_factor
    activation: str = "relu"       # f inside every adapter


def subnet(d_in: int, d_out: int, reduction_factor: int, activation: str) -> nn.Sequential:
    hidden = d_in // reduction_factor
    net = nn.Sequential(nn.Linear(d_in, hidden), ACTIVATIONS[activation](), nn.Linear(hidden, d_out))
    # zero last layer: the subnet outputs 0 at init, so the coupling starts as the identity
    nn.init.zeros_(net[2].weight)
    nn.init.zeros_(net[2].bias)
    return net


class NICECoupling(nn.Module):
    """Additive coupling on the two halves of the last dimension; exactly invertible for any F, G."""

    def __init__(self, d: int, reduction_factor: int, activation: str) -> None:
        super().__init__()
        self.d1 = d // 2                 # first half; the second has d - d // 2 entries
        d2 = d - self.d1
        self.F = subnet(d2, self.d1, reduction_factor, activation)  # reads e2, writes to e1
        self.G = subnet(self.d1, d2, reduction_factor, activation)  # reads o1, writes to e2

    def forward(self, e: torch.Tensor, inverse: bool = False) -> torch.Tensor:  # e: (B, T, d)
        x1, x2 = e[..., :self.d1], e[..., self.d1:]  # (B, T, d/2) each
        if not inverse:
            y1 = x1 + self.F(x2)
            y2 = x2 + self.G(y1)
        else:
            y2 = x2 - self.G(x1)
            y1 = x1 - self.F(y2)
        return torch.cat((y1, y2), dim=-1)  # (B, T, d)


def _first_block_pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The embedding output arrives as the first block's hidden_states: replace it by A_inv(e)."""
    coupling = module.invertible_adapter[0]
    if args:
        return (coupling(args[0]), *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": coupling(kwargs["hidden_states"])}


def apply(model: nn.Module, config: InvertibleAdapterConfig) -> nn.Module:
    freeze_base(model)
    attach(model, lambda d: Bottleneck(d, d // config.reduction_factor, config.activation))
    d = arch_symbols(model.config)["d_model"]
    model.invertible_adapter = NICECoupling(d, config.inv_reduction_factor, config.activation)
    coupling = model.invertible_adapter

    # forward on the embeddings: the input of the first block (T5: of the encoder's first block)
    first = blocks(model)[0][1]
    first.invertible_adapter = (coupling,)  # a tuple: the module is registered once, on the model
    first.register_forward_pre_hook(_first_block_pre_hook, with_kwargs=True)
    # inverse before the output embedding layer
    model.get_output_embeddings().register_forward_pre_hook(
        lambda module, args: (coupling(args[0], inverse=True), *args[1:]))
    return model
