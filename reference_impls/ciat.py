"""CIAT (Counter-Interference Adapter): embedding adapters and parallel layer adapters for multilingual MT.

Equation:   A(x) = ReLU(LN(x) W_down + b_down) W_up + b_up        every CIAT adapter (own layer norm)
            embedding adapter:  e ← e + A_emb(e)                  on the encoder's and the decoder's
                                                                  token embeddings, before the first block
            intra-layer adapters: y = x + Sublayer(x) + A(x)       beside the self-attention and the FFN
                                                                  sublayer of every block (x = the
                                                                  sublayer's input, before its norm)
            cross-attention adapter: the same, beside the decoder's encoder-decoder attention
Trainable:  (5 * n_layers // 2 + 2) * (2 * d_model * bottleneck + bottleneck + 3 * d_model)
            (catalog: total, written there for the default bottleneck d_model // 2)
            = two embedding adapters + 2 per encoder block + 3 per decoder block, each 2 d b + b + 3 d
            (layer norm 2 d, down-projection d b + b, up-projection b d + d); n_layers counts encoder and
            decoder blocks, assumed equally many (as in the paper's Transformers and in T5).
Paper:      "Counter-Interference Adapter for Multilingual Machine Translation", Yaoming Zhu et al., 2021
            (Findings of EMNLP 2021), arXiv 2104.08154 (v1 titled "Serial or Parallel? Plug-able Adapter
            for multilingual machine translation").

Which parts are implemented, on T5 (the only encoder-decoder family here; the paper uses a standard
Transformer translation model, which T5 resembles closely enough): all three components. The structure of
the embedding adapter (layer norm, down-projection, ReLU, up-projection, added to the embeddings) and
the default bottleneck d_model // 2 follow the authors' code (Yaoming95/CIAT, adapterEmb.py and
transformer_decoder_CIAT.py); the layer adapters are assumed to have the same structure and to sit in
parallel with their sublayer (the v1 title's "parallel"), which was not checked against the paper's
text. The authors' released decoder has adapters on the self-attention and the FFN only and freezes the
encoder-decoder attention; set cross_attention=False to reproduce that code.
Checked against: the authors' code github.com/Yaoming95/CIAT @c193c955 (transformer_decoder_CIAT.py builds
SA_adapter_decoder and FFW_adapter_decoder per block and no adapter for encdec_attention, whose
`trainable` is is_pretrain, i.e. frozen while the adapters train; adapterEmb.py); the arXiv v1 abstract
("embedding and layer adapters"). The paper's own section on the layer adapters could not be retrieved
here, so the evidence at hand (the code, the abstract) favours cross_attention=False as the faithful
default; the default stays True only because the catalog entry (default and formula) says so, and
changes with it.
Deviations: W_up and b_up start at zero (the authors' code uses the default dense init) so the adapted
model starts equal to the base model; the embedding adapter runs after T5's embedding dropout rather than
before it (identical when dropout is 0). One adapter set is trained per language direction; serving
several directions means one set each (multi-task), which this file does not manage.
Not mergeable: the layer norm and the ReLU sit inside each adapter.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from reference_impls._adapters import hidden_of, with_hidden
from reference_impls._core import arch_symbols, family, freeze_base
from reference_impls.residual_adapter import ResidualAdapterBlock


@dataclass
class CIATConfig:
    bottleneck: int | None = None  # adapter hidden size b; None: d_model // 2 (the authors' code default)
    embedding: bool = True         # embedding adapters on the encoder's and decoder's input embeddings
    intra_layer: bool = True       # adapters beside every self-attention and FFN sublayer
    cross_attention: bool = True   # adapters beside the decoder's encoder-decoder attention


class CIATAdapter(ResidualAdapterBlock):
    """A(x) = W_up ReLU(W_down LN(x)): the branch only (the residual is added by the caller).
    Same parameters and init as residual_adapter's block (own layer norm, W_up = 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d)
        return self.up(torch.relu(self.down(self.ln(x))))  # (B, T, b) -> (B, T, d)


def _input_of(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def add_parallel(sublayer: nn.Module, adapter: CIATAdapter) -> None:
    """y = Sublayer(x) + A(x): register the adapter on the sublayer and add its output to the sublayer's."""
    sublayer.add_module("ciat_adapter", adapter)

    def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        x = _input_of(args, kwargs)  # (B, T, d), the sublayer's input (its residual stream)
        return with_hidden(output, hidden_of(output) + module.ciat_adapter(x))

    sublayer.register_forward_hook(hook, with_kwargs=True)


def add_embedding_adapter(stack: nn.Module, adapter: CIATAdapter) -> None:
    """e ← e + A_emb(e) on the hidden states entering the stack's first block."""
    stack.add_module("ciat_emb_adapter", adapter)

    def pre_hook(block: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        e = _input_of(args, kwargs)  # (B, T, d), the embedded tokens
        e = e + stack.ciat_emb_adapter(e)
        if args:
            return (e, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": e}

    stack.block[0].register_forward_pre_hook(pre_hook, with_kwargs=True)


def apply(model: nn.Module, config: CIATConfig) -> nn.Module:
    if family(model) != "t5":
        raise ValueError("CIAT adapts encoder-decoder translation models; this file supports T5")
    freeze_base(model)
    d = arch_symbols(model.config)["d_model"]
    b = config.bottleneck if config.bottleneck is not None else d // 2
    for stack in (model.encoder, model.decoder):
        if config.embedding:
            add_embedding_adapter(stack, CIATAdapter(d, b))
        for block in stack.block:
            sublayers = list(block.layer)  # encoder: [self-attn, FFN]; decoder: [self-attn, cross-attn, FFN]
            for i, sub in enumerate(sublayers):
                is_cross = stack.is_decoder and i == 1
                if (config.cross_attention if is_cross else config.intra_layer):
                    add_parallel(sub, CIATAdapter(d, b))
    return model
