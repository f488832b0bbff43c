"""Parallel adapter (He et al.): a scaled bottleneck beside the feed-forward sublayer.

Equation:   h ← h + s · (ReLU(x W_down + b_down) W_up + b_up),   with h = FFN(x)
            W_down ∈ R^{d × r}, W_up ∈ R^{r × d}; x is the FFN's input, s a fixed scale
            (the paper's "scaled parallel adapter" at the FFN sublayer, the placement its experiments
            favour and the one its MAM adapter uses).
Trainable:  2 * d_model * bottleneck + bottleneck + d_model per layer   (catalog: per_layer)
Paper:      "Towards a Unified View of Parameter-Efficient Transfer Learning", Junxian He et al., 2021
            (ICLR 2022), arXiv 2110.04366.

Defaults r = 512, s = 4 are the paper's setting for the FFN parallel adapter (the one its MAM adapter
uses). The adapter reads the FFN's input through a forward pre-hook on its first projection and adds to
the output of its last projection (before the sublayer's residual connection and, in BERT, its layer
norm); that module is shared with mam_adapter.py, of which this method is the FFN half. s multiplies the
whole branch output, up-projection bias included (as in the authors' code). W_up and b_up start at zero
(the paper's code initialises the up-projection to zero, as LoRA does B), so the model starts equal to
the base model. Not mergeable: the ReLU sits between the projections.

Checked against: the authors' code github.com/jxhe/unify-parameter-efficient-tuning @3222ce2c,
petl/petl_factory.py Adapter_Layer (down_proj, ReLU, up_proj, output times adapter_scalar, bias
included; init_option "lora": Kaiming-uniform W_down, zero W_up, b_down and b_up) and exps/run_xsum.sh
(ffn_option parallel, ffn_bn 512, ffn_adapter_scalar 4, layer norm option none); the paper's abstract.
Deviation: b_down keeps nn.Linear's init instead of zero (the branch is silent at init either way); the
adapter's dropout is left out.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from reference_impls._core import find_targets, freeze_base, replace_module
from reference_impls.mam_adapter import ParallelAdapter


@dataclass
class ParallelAdapterConfig:
    bottleneck: int = 512  # r, the adapter's hidden size
    scaling: float = 4.0   # s, fixed scale on the adapter's output


def apply(model: nn.Module, config: ParallelAdapterConfig) -> nn.Module:
    freeze_base(model)
    ups, downs = find_targets(model, ["up"]), find_targets(model, ["down"])
    assert len(ups) == len(downs), "expected one up and one down projection per FFN"
    for up, down in zip(ups, downs):
        adapter = ParallelAdapter(down.module, config.bottleneck, config.scaling)  # W_up = 0 at init
        up.module.register_forward_pre_hook(adapter.catch_input)  # hands the FFN's input x to the adapter
        replace_module(model, down.name, adapter)
    return model
