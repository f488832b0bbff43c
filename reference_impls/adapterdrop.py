"""AdapterDrop: bottleneck adapters removed from the lowest Transformer layers.

Equation:   layer i < n_drop:   h_i = Layer_i(h_{i-1})                          (no adapter, nothing runs)
            layer i ≥ n_drop:   h ← h + W_up ReLU(W_down h + b_down) + b_up     after the FFN output
            W_down ∈ R^{m × d_model}, W_up ∈ R^{d_model × m}, m = d_model // reduction_factor
Trainable:  (n_layers - dropped_layers) * (2 * d_model * (d_model // reduction_factor)
            + d_model // reduction_factor + d_model)                            (catalog: total)
Paper:      "AdapterDrop: On the Efficiency of Adapters in Transformers", Andreas Rücklé et al., 2020
            (EMNLP 2021), arXiv 2010.11918.

The adapter is a Pfeiffer-style bottleneck (one per layer, after the feed-forward sublayer); it reuses
sequential_adapter.py's module and wraps the FFN's last projection, so it acts before the sublayer's
residual connection and layer norm (the adapters library's Pfeiffer configuration instead takes the
residual around the adapter after the FFN's own residual; a placement detail the catalog count does not
see). In the dropped layers no adapter module exists at all: the layer is the frozen base layer, so at
inference it runs no adapter code, and its activations can be shared across tasks (Sec. 3 of the paper).

Robust training (paper Sec. 3, "robust AdapterDrop"): with `robust=True` every layer gets an adapter and
`training_hooks` resamples, after every step, how many of the lowest layers skip their adapter in the
next step (uniform over 0 .. n_layers - 1); `drop_adapters(model, n)` then removes the lowest n adapters
for inference. The count above is the static configuration (robust=False). AdapterDrop's pruning of
AdapterFusion adapters is a separate procedure and is not implemented here.

Checked against: the paper's abstract and project page (adapters removed from the lowest layers at
training and inference; robust training over a random number of dropped layers); the adapters library
github.com/adapter-hub/adapters @88f18ebd (adapter_layer_base.py: a layer in `skip_layers` runs no adapter;
notebooks/Adapter_Drop_Training.ipynb: each step skips the lowest `np.random.randint(0, 11)` layers of a
12-layer model, i.e. 0..10, where this file draws 0..n_layers-1, 0..11 there). peft has no AdapterDrop.
The paper's full text was not re-read in this pass: the range of the robust draw is the one unverified
detail. Numeric pin: test_adapterdrop.py re-draws the robust schedule with random.Random(seed) and checks
that exactly the lowest n adapters are skipped, and pins the count per number of dropped layers.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from reference_impls._core import ROLE_PATTERNS, arch_symbols, family, freeze_base, matches, replace_module
from reference_impls.sequential_adapter import SequentialAdapter


@dataclass
class AdapterDropConfig:
    dropped_layers: int = 5      # n_drop: the lowest layers get no adapter
    reduction_factor: int = 16   # adapter bottleneck m = d_model // reduction_factor
    robust: bool = False         # adapters in every layer, a random number of lowest ones skipped per step
    seed: int = 0                # random generator of robust training


class DroppableAdapter(SequentialAdapter):
    """A SequentialAdapter whose branch can be switched off for a training step (robust AdapterDrop)."""

    active: bool = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_ff)
        h = self.base(x)  # (B, T, d_model)
        return h + self.adapter(h) if self.active else h


def _ffn_outputs(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every FFN output projection, lowest layer first, wrapped or not."""
    patterns = ROLE_PATTERNS[family(model)]["down"]
    return [(n, m) for n, m in model.named_modules() if any(matches(n, p) for p in patterns)]


def apply(model: nn.Module, config: AdapterDropConfig) -> nn.Module:
    n_layers = len(_ffn_outputs(model))
    if not 0 <= config.dropped_layers <= n_layers:
        raise ValueError(f"dropped_layers={config.dropped_layers} must be in 0..{n_layers} (the model's layers)")
    freeze_base(model)
    m = arch_symbols(model.config)["d_model"] // config.reduction_factor
    first = 0 if config.robust else config.dropped_layers
    for name, module in _ffn_outputs(model)[first:]:  # layers below `first` keep their plain base module
        replace_module(model, name, DroppableAdapter(module, m, "relu"))
    return model


def adapters(model: nn.Module) -> list[DroppableAdapter | None]:
    """The adapter of every layer, lowest first; None where it was dropped."""
    return [m if isinstance(m, DroppableAdapter) else None for _, m in _ffn_outputs(model)]


def drop_adapters(model: nn.Module, n: int) -> nn.Module:
    """Remove the adapters of the lowest n layers (put the frozen base module back); the rest all run."""
    for name, module in _ffn_outputs(model)[:n]:
        if isinstance(module, DroppableAdapter):
            replace_module(model, name, module.base)
    set_skipped(model, 0)
    return model


def set_skipped(model: nn.Module, n: int) -> None:
    """Robust training: the adapters of the lowest n layers are skipped (kept, not run)."""
    for i, a in enumerate(adapters(model)):
        if a is not None:
            a.active = i >= n


def training_hooks(model: nn.Module, config: AdapterDropConfig) -> dict[str, Callable]:
    if not config.robust:
        return {}
    rng = random.Random(config.seed)
    n_layers = len(adapters(model))
    set_skipped(model, rng.randrange(n_layers))

    def after_step(step: int) -> None:
        set_skipped(model, rng.randrange(n_layers))  # the number dropped in the next step

    return {"after_step": after_step}
