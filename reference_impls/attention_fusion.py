"""Attention Fusion: a learned attention over the frozen encoder's per-layer representations of each token.

Equation:   h_t^l: token t's hidden state after layer l of the frozen model, l = 0..L (0: embeddings)
            a_t^l = softmax_l( qᵀ h_t^l / sqrt(d_model) )          q ∈ R^{d_model}, the task's query
            o_t   = Σ_l a_t^l h_t^l                                   fed to the head in place of h_t^L
Trainable:  d_model                                                   (catalog: total)
Paper:      "Attention Fusion: a light yet efficient late fusion mechanism for task adaptation in NLU",
            Jin Cao, Chandana Satya Prakash, Wael Hamza, 2022 (Findings of NAACL 2022),
            doi 10.18653/v1/2022.findings-naacl.64 (no arXiv version).

Late fusion: the encoder runs under torch.no_grad() (nothing is inserted into it, so no error is
back-propagated through it), and the fusion module sits between its layers' outputs and the head.
Initialisation: q = 0, so the weights start uniform over the L+1 layers (the layer average); the
model therefore does not start equal to the base model, which reads only h^L.
Deviations: the paper's module was reconstructed from its abstract and description (one query vector per
task, attention across layers per token, about 0.0009% of BERT-base's parameters: ~1k, of the order of
d_model = 768); its exact parameterisation (e.g. extra projections) was not checked. The paper trains a
task head on o; here the model's frozen LM head reads o. Not mergeable.

Checked against: the paper's abstract and ACL Anthology record (2022.findings-naacl.64, pp. 857-866:
attention-based fusion of intermediate layer representations into task-attuned token representations,
0.0009% of the parameters, decoupled from the encoder); the full text was not available to this pass, so
the parameterisation above (one query, scaled dot product, layer-wise softmax) remains a reconstruction.
No code was published with the paper that this pass found; peft has no equivalent. Numeric pin:
test_attention_fusion.py re-computes softmax_l(qᵀ h^l / sqrt(d)) and the weighted sum by hand.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._core import Wrapper, family, freeze_base, replace_module


@dataclass
class AttentionFusionConfig:
    include_embeddings: bool = True   # the embedding output h^0 is one of the fused representations


class LayerAttentionFusion(Wrapper):
    """Wraps the backbone (HF base model): runs it without autograd and returns the fused representation
    as its last hidden state."""

    def __init__(self, base: nn.Module, d_model: int, include_embeddings: bool) -> None:
        super().__init__()
        self.base = base
        self.include_embeddings = include_embeddings
        # q = 0: uniform weights over the layers at the start
        self.query = nn.Parameter(torch.zeros(d_model))  # (d,)
        self.last_weights: torch.Tensor | None = None   # a of the last forward, (B, T, L+1), for inspection

    def forward(self, *args, **kwargs):
        wanted_hidden = kwargs.pop("output_hidden_states", False)
        with torch.no_grad():  # late fusion: nothing to back-propagate through in the encoder
            out = self.base(*args, output_hidden_states=True, **kwargs)
        hs = out.hidden_states if self.include_embeddings else out.hidden_states[1:]
        H = torch.stack(hs, dim=2)                                    # (B, T, L+1, d)
        scores = H @ self.query / math.sqrt(H.shape[-1])              # (B, T, L+1)
        a = torch.softmax(scores, dim=-1)
        self.last_weights = a.detach()
        out.last_hidden_state = (a.unsqueeze(-1) * H).sum(dim=2)      # (B, T, d)
        if not wanted_hidden:
            out.hidden_states = None
        return out


def fusion_module(model: nn.Module) -> LayerAttentionFusion:
    return getattr(model, model.base_model_prefix)


def apply(model: nn.Module, config: AttentionFusionConfig) -> nn.Module:
    if family(model) == "t5":
        raise ValueError("Attention Fusion fuses an encoder's layers; encoder-decoder models are not supported")
    freeze_base(model)
    d_model = model.get_input_embeddings().weight.shape[1]
    replace_module(model, model.base_model_prefix,
                   LayerAttentionFusion(getattr(model, model.base_model_prefix), d_model, config.include_embeddings))
    return model
