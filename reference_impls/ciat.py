"""CIAT (Counter-Interference Adapter): embedding adapters and parallel layer adapters for multilingual MT.

Equation:   embedding adapter:  e ← e + A_emb(e),   A_emb(e) = ReLU(LN_emb(e) W_down + b_down) W_up + b_up
                                on the encoder's and the decoder's token embeddings, before the first block
                                (A_emb has its own layer norm LN_emb)
            layer adapters:     y = x + Sublayer(LN(x)) + A(LN(x)),   A(z) = ReLU(z W_down + b_down) W_up + b_up
                                in parallel with the self-attention and the FFN sublayer of every encoder and
                                decoder block; z = LN(x) is the sublayer's own (frozen) pre-norm output, which
                                the sublayer and its adapter share, and A has no layer norm of its own
Trainable:  2 * (2 d b + b + 3 d) + 2 * n_layers * (2 d b + b + d),   d = d_model, b = d_model // 2
            (catalog: total, written there for the default bottleneck)
            = two embedding adapters (layer norm 2 d, down-projection d b + b, up-projection b d + d) and two
            layer adapters per block (2 d b + b + d each); n_layers counts encoder and decoder blocks.
            With cross_attention=True each decoder block has a third layer adapter (see below).
Paper:      "Counter-Interference Adapter for Multilingual Machine Translation", Yaoming Zhu et al., 2021
            (Findings of EMNLP 2021), arXiv 2104.08154 (v1 titled "Serial or Parallel? Plug-able Adapter
            for multilingual machine translation").

Checked against: the authors' code github.com/Yaoming95/CIAT @b07e4673 (HEAD; the model files are
unchanged since c193c955): neurst/layers/adapters/adapterEmb.py (AdapterEmb: layer norm, Dense + ReLU to
d // 2, Dense back; x + AdapterEmb(x) on the embedded inputs in transformer_encoder_CIAT.py and
transformer_decoder_CIAT.py, before the embedding dropout), neurst/layers/adapters/adapterLayer.py
(AdapterLayer, "Layer Adapter (Parallel)") and neurst/layers/__init__.py
build_transformer_component_with_adapter (sets use_norm=False: the layer adapters have no layer norm of
their own) with common_layers.py PrePostProcessingWrapperWithadapter (norm_input = LN(x); returns
x + Sublayer(norm_input) + Adapter(norm_input)); transformer_decoder_CIAT.py builds SA_adapter_decoder
and FFW_adapter_decoder per block and no adapter for encdec_attention, whose `trainable` is is_pretrain
(frozen while the adapters train). The paper's text beyond its abstract (both arXiv versions: "embedding
and layer adapters") could not be retrieved with the tools at hand; its section numbers are therefore
not cited and nothing here rests on them.
Default for the cross-attention adapter: cross_attention=False, because the only primary sources read
(the released code and the abstract) have layer adapters on self-attention and FFN only. cross_attention=
True is a peftkb extension, not the paper's: it adds a third parallel layer adapter beside every decoder
encoder-decoder attention, (5 * n_layers // 2) layer adapters in all instead of 2 * n_layers.
Deviations: W_up and b_up start at zero (the authors' code uses Keras' default Dense init) so the adapted
model starts equal to the base model; the adapters' internal dropout (the code's
layer_postprocess_dropout_rate on the bottleneck) is left out; on T5 the sublayer's norm is T5's RMS norm
(the paper's Transformer uses LayerNorm); the embedding adapter runs after T5's embedding dropout rather
than before it (identical when dropout is 0). One adapter set is trained per language direction; serving
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
    intra_layer: bool = True       # parallel adapters beside every self-attention and FFN sublayer
    cross_attention: bool = False  # peftkb extension: also beside the decoder's encoder-decoder attention


class CIATAdapter(ResidualAdapterBlock):
    """Embedding adapter A_emb(e) = W_up ReLU(W_down LN_emb(e)): the branch only (the caller adds e).
    Same parameters and init as residual_adapter's block (own layer norm, W_up = 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d)
        return self.up(torch.relu(self.down(self.ln(x))))  # (B, T, b) -> (B, T, d)


class CIATLayerAdapter(nn.Module):
    """Layer adapter A(z) = W_up ReLU(W_down z): no layer norm of its own (z is already normalised)."""

    def __init__(self, d_model: int, b: int) -> None:
        super().__init__()
        self.down = nn.Linear(d_model, b)  # W_down: (b, d) + b_down, nn.Linear's Kaiming-uniform init
        self.up = nn.Linear(b, d_model)    # W_up: (d, b) + b_up
        # zero init: the branch outputs exactly 0, so the block starts equal to the frozen one
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # z: (B, T, d)
        return self.up(torch.relu(self.down(z)))  # (B, T, b) -> (B, T, d)


def _input_of(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def add_parallel(sublayer: nn.Module, adapter: CIATLayerAdapter) -> None:
    """x + Sublayer(LN(x)) + A(LN(x)): the T5 sublayer already returns x + Sublayer(LN(x)); add A of
    its own pre-norm output."""
    sublayer.add_module("ciat_adapter", adapter)

    def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        x = _input_of(args, kwargs)  # (B, T, d), the sublayer's input (its residual stream)
        z = module.layer_norm(x)     # (B, T, d), the sublayer's frozen pre-norm, shared with the adapter
        return with_hidden(output, hidden_of(output) + module.ciat_adapter(z))

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
                    add_parallel(sub, CIATLayerAdapter(d, b))
    return model
