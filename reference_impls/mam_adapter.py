"""MAM adapter (Mix-And-Match): prefix tuning on attention + a scaled parallel adapter on the FFN.

Equation:   attention:  head_i = Attention(x W_q^i, [P_k^i; x W_k^i], [P_v^i; x W_v^i])     (prefix tuning)
            FFN:        h = FFN(x) + s * (W_up ReLU(W_down x + b_down) + b_up)                (parallel adapter)
            where x is the FFN's input, W_down ∈ R^{bottleneck × d_model}, W_up ∈ R^{d_model × bottleneck}
Trainable:  2 * n_virtual_tokens * n_kv_heads * d_head + 2 * d_model * bottleneck + bottleneck + d_model
            per layer                                                          (catalog: per_layer)
Paper:      "Towards a Unified View of Parameter-Efficient Transfer Learning", Junxian He et al., 2021
            (ICLR 2022), arXiv 2110.04366.

The prefix is the one of prefix_tuning.py, without the reparameterisation MLP by default (the catalog
counts the prefix itself; set prefix_projection=True to train through the MLP and call
prefix_tuning.drop_projection afterwards). The parallel adapter reads the FFN's input and adds to its
output. Every architecture here has a first FFN projection ("up") that sees the FFN's input and a last
one ("down") that produces its output, so the adapter wraps "down" and a forward pre-hook on "up"
hands it x; this also covers BERT, whose FFN is split over two modules. W_up starts at zero, so the
adapter starts silent (the prefix still changes the output). On T5 the prefix enters through every
self-attention's cache argument (see prefix_tuning.py).
Not mergeable: the prefix is attended to and the adapter has a nonlinearity.

Checked against: the authors' code github.com/jxhe/unify-parameter-efficient-tuning @3222ce2c:
exps/run_xsum.sh's MAM block (attn_mode prefix, attn_bn = 30; ffn_mode adapter, ffn_option parallel,
ffn_adapter_layernorm_option none, ffn_adapter_init_option lora, ffn_adapter_scalar 4, ffn_bn = 512) and
petl/petl_factory.py Adapter_Layer (up = up_proj(ReLU(down_proj(x))) * scale, the scale multiplying the
up-projection's bias too; no layer norm with option none); the paper's abstract and its MAM adapter
definition (prefix tuning with l = 30 plus a scaled parallel adapter with r = 512 on the FFN), as recorded
in the catalog. Deviation: the authors' "lora" init also zeroes b_down; here b_down keeps nn.Linear's
init (W_up = b_up = 0 either way, so the adapter starts silent). The adapter's dropout is left out.
The authors' Prefix module always trains the prefix through an MLP (wte, Linear(d, mid_dim), Tanh,
Linear); here that reparameterisation is off by default (prefix_projection=False) because the catalog
counts the prefix itself, and on with prefix_projection=True.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._core import Wrapper, find_targets, freeze_base, linear_dims, replace_module
from reference_impls.prefix_tuning import PrefixTuningConfig, add_prefix
from reference_impls.sequential_adapter import Bottleneck


@dataclass
class MAMAdapterConfig:
    n_virtual_tokens: int = 30       # prefix length on attention
    bottleneck: int = 512            # hidden size of the parallel FFN adapter
    scaling: float = 4.0             # s, applied to the parallel adapter's output
    prefix_projection: bool = False  # train the prefix through the reparameterisation MLP
    projection_hidden: int = 512     # that MLP's hidden size, if used


class ParallelAdapter(Wrapper):
    """Wraps the FFN's output projection: h = base(z) + s * adapter(x), x = the FFN's input."""

    def __init__(self, base: nn.Module, m: int, s: float) -> None:
        super().__init__()
        self.base = base
        self.adapter = Bottleneck(linear_dims(base)[1], m, "relu")  # W_up = 0 at init
        self.s = s
        self.x: torch.Tensor | None = None  # the FFN's input, set by catch_input on every forward

    def catch_input(self, up: nn.Module, args: tuple) -> None:
        """Forward pre-hook on the FFN's first projection."""
        self.x = args[0]  # (B, T, d_model)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # z: (B, T, d_ff), the FFN's inner activation
        x, self.x = self.x, None  # do not keep activations alive between calls
        return self.base(z) + self.s * self.adapter(x)  # (B, T, d_model)


def apply(model: nn.Module, config: MAMAdapterConfig) -> nn.Module:
    freeze_base(model)
    add_prefix(model, PrefixTuningConfig(n_virtual_tokens=config.n_virtual_tokens,
                                         prefix_projection=config.prefix_projection,
                                         projection_hidden=config.projection_hidden))
    ups, downs = find_targets(model, ["up"]), find_targets(model, ["down"])
    assert len(ups) == len(downs), "expected one up and one down projection per FFN"
    for up, down in zip(ups, downs):
        adapter = ParallelAdapter(down.module, config.bottleneck, config.scaling)
        up.module.register_forward_pre_hook(adapter.catch_input)
        replace_module(model, down.name, adapter)
    return model
