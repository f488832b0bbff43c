"""PASTA: trainable vectors added to the hidden states of the special tokens before every layer.

Equation:   H^{(l)} ← H^{(l)} + M^{(l)},   M^{(l)}_i = m^{(l)}_p  if token i is the p-th special token, else 0
            applied to the input of layer l's self-attention (the layer's input hidden states), l = 1..L;
            m^{(l)}_p ∈ R^{d_model}, p = 1..n_special_tokens ([CLS], [SEP] of one BERT sentence).
Trainable:  n_special_tokens * d_model per layer              (catalog: per_layer)
Paper:      "Parameter-Efficient Tuning with Special Token Adaptation", Xiaocong Yang et al., 2023
            (EACL 2023), arXiv 2210.04382.

Which tokens are special: with `special_token_ids` given, the p-th occurrence in a sequence of any of
those ids gets m_p (occurrences after the n_special_tokens-th get nothing); with none given (the
synthetic tasks have no [CLS]/[SEP]), the first token and the last attended token of each sequence stand
for [CLS] and [SEP] of a single BERT sentence (then n_special_tokens must be 2).
Initialisation: m = 0, so the model starts equal to the base model (the paper does not state its init).
The vectors change hidden states, not weights, and only at some positions: not mergeable. The paper
trains BERT/RoBERTa with a task head; here the LM head stays frozen; Llama is supported the same way
(first and last token).

Checked against: the paper's abstract (arXiv 2210.04382: only the special tokens' representations, e.g.
[CLS] and [SEP], are modified, before the self-attention module at each layer) and §1-§2 (vectors added to
the hidden states of special tokens, sequence length unchanged, P-tuning v2's per-layer setting); §3's
equations were not read in this pass, and no authors' repository or peft tuner was compared. The test
pins the per-position addition (m_p exactly at the p-th special token, nothing elsewhere).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._composition import blocks
from reference_impls._core import Wrapper, freeze_base, replace_module


@dataclass
class PastaConfig:
    n_special_tokens: int = 2                   # special-token positions adapted ([CLS] and [SEP] for one sentence)
    special_token_ids: tuple[int, ...] = ()     # ids counted as special; () = first and last attended token


class PastaBlock(Wrapper):
    """A transformer block whose input hidden states get m_p added at the p-th special token."""

    def __init__(self, base: nn.Module, n_special: int, d_model: int) -> None:
        super().__init__()
        self.base = base
        # zero init: M = 0, so the block starts as the base block
        self.special_vectors = nn.Parameter(torch.zeros(n_special, d_model))  # (P, d_model): m_1..m_P
        self.selector: torch.Tensor | None = None  # (B, T, P) one-hot rows, set by PastaModel per batch

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):  # hidden_states: (B, T, d_model)
        if self.selector is not None:
            M = self.selector.to(hidden_states.dtype) @ self.special_vectors  # (B, T, P) @ (P, d) -> (B, T, d)
            hidden_states = hidden_states + M
        return self.base(hidden_states, *args, **kwargs)


class PastaModel(nn.Module):
    """Wraps an HF model: finds the special tokens of each batch, then runs the model."""

    def __init__(self, model: nn.Module, config: PastaConfig) -> None:
        super().__init__()
        self.model = model
        self.config = model.config  # what HF code and our helpers read
        self.pasta = config
        if not config.special_token_ids and config.n_special_tokens != 2:
            raise ValueError("without special_token_ids the first and last token are adapted: n_special_tokens=2")
        d_model = model.get_input_embeddings().weight.shape[1]
        self.blocks = []  # plain list: the blocks are already registered inside self.model
        for name, block in blocks(model):
            wrapped = PastaBlock(block, config.n_special_tokens, d_model)
            replace_module(model, name, wrapped)
            self.blocks.append(wrapped)

    def selector(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, T, P): row (b, i) is the one-hot of p if token i of sequence b is the p-th special token."""
        B, T = input_ids.shape
        P = self.pasta.n_special_tokens
        if self.pasta.special_token_ids:
            special = torch.isin(input_ids, torch.tensor(self.pasta.special_token_ids, device=input_ids.device))
            p = special.long().cumsum(dim=1) - 1                  # (B, T): index among the special tokens
            keep = special & (p < P)
            sel = torch.zeros(B, T, P, device=input_ids.device)
            sel[keep] = nn.functional.one_hot(p[keep], P).float()
            return sel
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        last = mask.long().cumsum(dim=1).argmax(dim=1)           # (B,): position of the last attended token
        sel = torch.zeros(B, T, P, device=input_ids.device)      # (B, T, 2)
        sel[:, 0, 0] = 1.0                                       # [CLS]: the first token
        sel[torch.arange(B), last, 1] = 1.0                      # [SEP]: the last attended token
        return sel

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        sel = self.selector(input_ids, attention_mask)
        for block in self.blocks:
            block.selector = sel
        try:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        finally:
            for block in self.blocks:
                block.selector = None


def apply(model: nn.Module, config: PastaConfig) -> nn.Module:
    freeze_base(model)
    return PastaModel(model, config)
