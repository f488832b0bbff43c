"""Xattn Tuning: fine-tune only the decoder's cross-attention (and the embeddings) of an encoder-decoder model.

Equation:   in every decoder block, cross-attention  Attn(Q = H_dec W_q, K = H_enc W_k, V = H_enc W_v) W_o;
            only W_q, W_k, W_v, W_o of the cross-attention, the cross-attention sublayer's layer norm g and the
            embedding table E are updated:
                W ← W0 + ΔW  for those matrices,   g ← g0 + Δg,   E ← E0 + ΔE,   everything else frozen
Trainable:  n_layers // 2 * (4 * d_model * n_heads * d_head + d_model) + vocab_size * d_model   (catalog:
            trainable_params.total): 4 projections of d_model x (n_heads * d_head) and the sublayer's
            (RMS) layer-norm gain per decoder block (n_layers counts encoder + decoder blocks, equal depths as
            in T5) and one embedding table; T5 is bias-free
Paper:      "Cross-Attention is All You Need: Adapting Pretrained Transformers for Machine Translation",
            Mozhdeh Gheini, Xiang Ren, Jonathan May, 2021 (EMNLP 2021), arXiv 2104.08771.

The paper adapts a translation model to a new source or target language and trains the cross-attention
together with the new language's embeddings. T5 shares one table between encoder input, decoder input and
(tied) output projection, so "the new language's embeddings" is that one table here, counted once; with
an untied output projection (T5 v1.1) the projection stays frozen. The cross-attention sublayer's layer
norm is trained too, as in the authors' code (see below). Only the T5 family is supported (the
encoder-decoder family in _core). The updates are dense deltas beside the frozen weights
(reference_impls/_partial.py): identical gradients to training the weights directly, the frozen model
stays bitwise intact, and merge() adds the deltas in.

Checked against: the authors' code github.com/MGheini/xattn-transfer-for-mt @bf86b023,
fairseq-modified/fairseq_cli/train.py (--only-finetune-cross-attn keeps trainable every parameter whose
name contains "encoder_attn", i.e. fairseq's encoder_attn.{q,k,v,out}_proj and encoder_attn_layer_norm,
plus the source embeddings, positional embeddings and embedding layer norm; everything else frozen).
T5 has no learned positional embeddings and no embedding layer norm, so those have no counterpart here.
The paper's abstract was read, not its method section.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from reference_impls._core import family, find_targets
from reference_impls._partial import attach_deltas, base_parameters


@dataclass
class XattnTuningConfig:
    target_modules: tuple[str, ...] = ("EncDecAttention.q", "EncDecAttention.k", "EncDecAttention.v",
                                       "EncDecAttention.o")  # T5's cross-attention projections


def apply(model: nn.Module, config: XattnTuningConfig) -> nn.Module:
    if family(model) != "t5":
        raise ValueError("Xattn Tuning needs an encoder-decoder model with cross-attention (T5 family)")
    params = base_parameters(model)
    name_of = {id(p): n for n, p in params.items()}
    selection: dict[str, None] = {}
    for t in find_targets(model, config.target_modules):
        for p in t.module.parameters(recurse=False):  # weight (and bias, where the model has one)
            selection[name_of[id(p)]] = None
    for block in model.decoder.block:  # the cross-attention sublayer's layer norm ("encoder_attn_layer_norm")
        selection[name_of[id(block.layer[1].layer_norm.weight)]] = None
    selection[name_of[id(model.get_input_embeddings().weight)]] = None  # the shared embedding table
    attach_deltas(model, selection)  # dense ΔW, ΔE, zero: starts equal to the pretrained model
    return model
