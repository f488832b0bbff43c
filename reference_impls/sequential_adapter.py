"""Sequential (Houlsby) adapter: a bottleneck MLP after the attention output and after the FFN output.

Equation:   h ← h + W_up f(W_down h + b_down) + b_up,   W_down ∈ R^{m × d_model}, W_up ∈ R^{d_model × m}
            applied to the output of each sublayer's last projection, before the sublayer's residual
            connection and layer norm (paper Fig. 2); f = GELU by default (adapter-bert's feedforward_adapter), m = bottleneck.
Trainable:  2 * (2 * d_model * bottleneck + bottleneck + d_model) per layer   (catalog: per_layer)
Paper:      "Parameter-Efficient Transfer Learning for NLP", Neil Houlsby et al., 2019 (ICML 2019),
            arXiv 1902.00751.

Deviations: the paper initialises both projections near zero and also trains the layer norms; here
W_up and b_up start at exactly zero (as in the adapters library), so each adapter starts as the identity
and the model as the base model, and the layer norms stay frozen (the catalog's count leaves them out).
On T5 the attention adapter follows the self-attention only. Not mergeable: f sits between the two
projections, so the adapter cannot be folded into a weight.
Checked against: the authors' code github.com/google-research/adapter-bert @1a31fc6e, modeling.py
(feedforward_adapter: x + W2 gelu(W1 x + b1) + b2, weights truncated-normal with init_scale 1e-3, biases
zero; adapter_fn applied to the attention output projection and to the FFN output projection, after
their dropout and before layer_norm(· + residual)); the paper's abstract and Fig. 2's placement as
recorded above. The test pins the branch h + W_up f(W_down h + b_down) + b_up.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._core import Wrapper, freeze_base, linear_dims, replace_modules

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


@dataclass
class SequentialAdapterConfig:
    bottleneck: int = 64                           # m, the adapter's hidden size
    activation: str = "gelu"                       # f, between the two projections (adapter-bert: gelu)
    target_modules: tuple[str, ...] = ("o", "down")  # an adapter follows each of these (attention out, FFN out)


class Bottleneck(nn.Module):
    """up(f(down(h))): the adapter's residual branch (no residual here)."""

    def __init__(self, d_model: int, m: int, activation: str = "relu") -> None:
        super().__init__()
        self.down = nn.Linear(d_model, m)  # W_down: (m, d_model), nn.Linear's Kaiming-uniform init
        self.f = ACTIVATIONS[activation]()
        self.up = nn.Linear(m, d_model)    # W_up: (d_model, m)
        # zero init: the branch outputs exactly 0, so the adapter starts as the identity
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # h: (B, T, d_model)
        return self.up(self.f(self.down(h)))  # (B, T, m) -> (B, T, d_model)


class SequentialAdapter(Wrapper):
    """A sublayer's output projection followed by an adapter: h = base(x); h + adapter(h)."""

    def __init__(self, base: nn.Module, m: int, activation: str) -> None:
        super().__init__()
        self.base = base
        self.adapter = Bottleneck(linear_dims(base)[1], m, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)  # (B, T, d_model)
        return h + self.adapter(h)


def apply(model: nn.Module, config: SequentialAdapterConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules,
                    lambda t: SequentialAdapter(t.module, config.bottleneck, config.activation))
    return model
