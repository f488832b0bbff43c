"""SHiRA: Sparse High Rank Adapters.

Equation:   h = (W0 + S) x + b,   S ∈ R^{d_out × d_in} zero except at k = r (d_in + d_out) fixed positions,
            whose values are trained
Trainable:  r * (d_in + d_out) per targeted module      (catalog: trainable_params.per_target)
Paper:      "Sparse High Rank Adapters", Kartikeya Bhardwaj et al., 2024 (NeurIPS 2024), arXiv 2406.13175.

SHiRA fine-tunes a small fixed subset of each weight matrix directly. r only sizes the budget, as many
values as a rank-r LoRA trains; the sparse update itself generally has full rank. The positions are a
random mask (peft's `random_mask`): the first k entries of a permutation of the d_out · d_in flat
positions, drawn from a CPU generator seeded with `random_seed` (None: torch's default generator seed, so
every layer of one shape gets the same positions, as in peft). The trained values are kept in row-major
order of their positions. S starts at zero, so the adapted model starts equal to the base model; S merges
into W0, and since only the k values differ, switching adapters on a device only rewrites k entries
(the paper's rapid switching).

Checked against: the paper's method section (train a sparse subset of the pretrained weights, sized like a
rank-r LoRA; random and other masks); peft 0.21.2 `peft/tuners/shira/layer.py` (update_layer: k =
r (d_in + d_out), zero init, indices from torch.where(mask); get_delta_weight; forward F.linear(x, W + S, b))
and `mask_functions.py` (random_mask); the oracle tests compare the mask, outputs, gradients and merged
weights with peft's ShiraModel.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import AdditiveUpdate, freeze_base, linear_dims, linear_weight, replace_modules


@dataclass
class SHiRAConfig:
    r: int = 32                                   # budget: r * (d_in + d_out) trained entries per matrix
    mask_type: str = "random"                     # how the positions are chosen (only random here)
    random_seed: int | None = None                # seed of the random mask (None: torch's default seed)
    target_modules: tuple[str, ...] = ("q", "v")  # roles or module-name suffixes


def random_positions(d_out: int, d_in: int, k: int, seed: int | None) -> torch.Tensor:
    """k distinct flat positions into a (d_out, d_in) matrix, sorted (row-major order)."""
    g = torch.Generator()
    if seed is not None:
        g.manual_seed(seed)
    return torch.randperm(d_out * d_in, generator=g)[:k].sort().values  # (k,)


class SHiRALinear(AdditiveUpdate):
    def __init__(self, base: nn.Module, name: str, r: int, seed: int | None = None) -> None:
        super().__init__()
        d_in, d_out = linear_dims(base)
        k = r * (d_in + d_out)
        if k > d_in * d_out:
            raise ValueError(f"SHiRA: r={r} asks for {k} entries of {name}, which has only {d_in * d_out}")
        self.base, self.d_in, self.d_out = base, d_in, d_out
        self.register_buffer("index", random_positions(d_out, d_in, k, seed))  # (k,) flat positions
        # zero init: S = 0, so the wrapped layer starts identical to the base layer
        self.values = nn.Parameter(torch.zeros(k))  # (k,)
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        S = self.values.new_zeros(self.d_out * self.d_in).index_add(0, self.index, self.values)
        return S.view(self.d_out, self.d_in)  # (d_out, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        if self.merged:
            return self.base(x)
        W = linear_weight(self.base) + self.delta_weight()  # W0 + S: (d_out, d_in)
        return F.linear(x, W, self.base.bias)               # (B, T, d_out)


def apply(model: nn.Module, config: SHiRAConfig) -> nn.Module:
    if config.mask_type != "random":
        raise ValueError(f"SHiRA: mask_type '{config.mask_type}' is not implemented here; use 'random'")
    freeze_base(model)
    replace_modules(model, config.target_modules, lambda t: SHiRALinear(t.module, t.name, config.r, config.random_seed))
    return model
