"""Trainable Tokens: train the embedding rows of a few chosen tokens, nothing else.

Equation:   E'[t] = E[t] + (e_t − E[t]) for t ∈ T (the chosen token ids), E'[t] = E[t] otherwise;
            the new rows e_t start as copies of E[t] and are trained; with tied input and output embeddings
            the output layer reads the same E'
Trainable:  n_tokens * d_model      (catalog: trainable_params.total)
Paper:      none; the method is peft's (peft 0.21.2 `peft/tuners/trainable_tokens`), used to train the
            embeddings of newly added tokens without training (or storing) the whole embedding matrix.

The chosen ids are `token_indices`, or, when that is empty, the last `n_tokens` ids of the vocabulary,
where tokens added to a tokenizer go. The new rows start as copies of the old ones, so the adapted model
starts equal to the base model; merging writes them into the embedding matrix (index_copy) and unmerging
writes the saved originals back. When the output layer is tied to the input embedding (BERT, T5 and GPT-2
here; not Llama), it is wrapped too and reads the same trained rows, as peft's tied adapter does; the
trained rows are then counted once.

Checked against: peft 0.21.2 `peft/tuners/trainable_tokens/layer.py` (update_layer: the delta starts as the
original rows; get_merged_weights: index_copy; forward via F.embedding / F.linear; merge, unmerge) and
`model.py` (tied layers share the embedding adapter's rows); the oracle tests compare outputs, gradients
and merged weights with peft's TrainableTokensModel.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import Wrapper, freeze_base


@dataclass
class TrainableTokensConfig:
    n_tokens: int = 0                             # how many token ids to train (the last ids, without token_indices)
    token_indices: tuple[int, ...] = ()           # the ids to train; n_tokens must match when both are given


class TrainableTokensEmbedding(Wrapper):
    """An nn.Embedding (or a tied output nn.Linear) whose rows at `index` come from the trainable `rows`."""

    def __init__(self, base: nn.Module, index: torch.Tensor, rows: nn.Parameter | None = None) -> None:
        super().__init__()
        self.base = base
        self.register_buffer("index", index)                                     # (n,) token ids
        self.register_buffer("original", base.weight[index].detach().clone())   # (n, d_model), for unmerge
        # copies of the current rows: E' = E at init, so the model starts identical to the base model
        self.rows = rows if rows is not None else nn.Parameter(self.original.clone())  # (n, d_model)
        self.merged = False

    @property
    def bias(self) -> torch.Tensor | None:  # BERT's set_output_embeddings reads it
        return getattr(self.base, "bias", None)

    def merged_weight(self) -> torch.Tensor:
        return self.base.weight.index_copy(0, self.index, self.rows)  # (vocab, d_model), a new tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        if isinstance(self.base, nn.Embedding):  # x: (B, T) ids
            b = self.base
            return F.embedding(x, self.merged_weight(), b.padding_idx, b.max_norm, b.norm_type,
                               b.scale_grad_by_freq, b.sparse)  # (B, T, d_model)
        return F.linear(x, self.merged_weight(), self.base.bias)  # tied output layer: (B, T, vocab)

    @torch.no_grad()
    def merge(self) -> None:  # idempotent, so the tied pair may both merge the one shared matrix
        self.base.weight.index_copy_(0, self.index, self.rows)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        self.base.weight.index_copy_(0, self.index, self.original)
        self.merged = False


def token_ids(config: TrainableTokensConfig, vocab_size: int) -> torch.Tensor:
    ids = config.token_indices or tuple(range(vocab_size - config.n_tokens, vocab_size))
    if config.token_indices and config.n_tokens not in (0, len(ids)):
        raise ValueError(f"trainable-tokens: n_tokens={config.n_tokens} but {len(ids)} token_indices are given")
    if not ids:
        raise ValueError("trainable-tokens: no token selected; set n_tokens (the last ids) or token_indices")
    if len(set(ids)) != len(ids) or not all(0 <= i < vocab_size for i in ids):
        raise ValueError(f"trainable-tokens: token ids must be distinct and in 0..{vocab_size - 1}")
    return torch.tensor(sorted(ids))


def apply(model: nn.Module, config: TrainableTokensConfig) -> nn.Module:
    freeze_base(model)
    emb = model.get_input_embeddings()
    out = model.get_output_embeddings()
    index = token_ids(config, emb.num_embeddings)
    wrapped = TrainableTokensEmbedding(emb, index)
    model.set_input_embeddings(wrapped)  # T5: also the encoder's and decoder's embed_tokens
    if out is not None and out.weight is emb.weight:  # tied: the output layer reads the same trained rows
        model.set_output_embeddings(TrainableTokensEmbedding(out, index, rows=wrapped.rows))
    return model
