"""SparseAdapter: adapters pruned at initialisation (SNIP) and trained sparse.

Equation:   h ← h + (M_up ⊙ W_up) f((M_down ⊙ W_down) h + b_down) + b_up      (Houlsby placement)
            M = 1[S(w) among the top (1 - s) share of all adapter weights], fixed before training,
            S(w) = |w ⊙ Σ_batches ∂L/∂w| on task data at initialisation (SNIP; global over all adapters),
            or |w| (magnitude) or a random score; s = sparsity.
            "Large-Sparse": a larger bottleneck with a higher sparsity at the same budget,
            m' = m / (1 - s) (large_sparse_bottleneck).
Trainable:  the kept weights plus the (dense) biases:
            total  n_layers * 2 * (bottleneck + d_model) + W - W * sparsity // 1,
            W = n_layers * 4 * d_model * bottleneck  (the adapters' weights; two adapters per block)
Paper:      "SparseAdapter: An Easy Approach for Improving the Parameter-Efficiency of Adapters", Shwai He et
            al., 2022 (Findings of EMNLP 2022), arXiv 2210.04284.

Only the kept entries are parameters (`values`, with their flat positions as the buffer `idx`), so the
trainable count is the sparse one and pruned entries stay exactly zero. Biases are not pruned (SNIP
scores weights). Initialisation: both projections random (Houlsby's near-identity init: W_down as
nn.Linear, W_up ~ N(0, 0.01²)), since SNIP needs a gradient through W_up and a nonzero w; so the model
starts close to, not equal to, the base model. The init and the random/magnitude masks are drawn from a
generator seeded by `config.seed`, so the same config (and data, for SNIP) rebuilds the same mask, which
is what lets saved values be loaded into a fresh model. Deviation: the paper plugs the pruning into five
adapter types; this implements the Houlsby adapter. SNIP needs data: pass `data` (batches) to apply().
Not mergeable: f sits between the projections.

Checked against: the authors' code github.com/Shwai-He/SparseAdapter @b1900843,
src/transformers/pruning/pruners.py (SNIP.score: |∂L/∂m| of a multiplicative mask m, i.e. |w ⊙ ∂L/∂w|
with the gradient accumulated over the scoring batches before the magnitude is taken;
Pruner._global_mask: one threshold over all prunable scores, keeping ceil((1 - sparsity) · n) entries;
Mag: |w|; Rand: random scores) and petl/options.py (pruner choices rand, mag, snip, grasp, synflow; its
default there is rand). GraSP and SynFlow are not implemented. The paper's abstract was read, not its
method section. Here exactly n - floor(sparsity · n) entries are kept.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import find_targets, freeze_base, replace_module
from reference_impls.sequential_adapter import Bottleneck, SequentialAdapter


@dataclass
class SparseAdapterConfig:
    sparsity: float = 0.4                          # s: share of adapter weights pruned at initialisation
    criterion: str = "snip"                        # snip (|w · dL/dw|), magnitude (|w|) or random
    bottleneck: int = 64                           # m, each adapter's hidden size
    activation: str = "relu"                       # f between the projections
    seed: int = 0                                  # seeds the adapters' init and the random/magnitude scores
    target_modules: tuple[str, ...] = ("o", "down")  # an adapter follows each (attention out, FFN out)


def large_sparse_bottleneck(bottleneck: int, sparsity: float) -> int:
    """The "Large-Sparse" bottleneck: m / (1 - s), so that the kept weights match a dense adapter of size m."""
    return round(bottleneck / (1 - sparsity))


def n_pruned(total: int, sparsity: float) -> int:
    """floor(s * total), with s read as the catalog formula reads it (a fraction, not a binary float)."""
    return math.floor(Fraction(sparsity).limit_denominator(10**9) * total)


class SparseLinear(nn.Module):
    """y = (M ⊙ W) x + b, holding only the kept entries of W as parameters."""

    def __init__(self, linear: nn.Linear, mask: torch.Tensor) -> None:
        super().__init__()
        self.shape = tuple(linear.weight.shape)  # (d_out, d_in)
        self.register_buffer("idx", mask.flatten().nonzero().squeeze(1))  # (kept,), flat positions in W
        self.values = nn.Parameter(linear.weight.detach().flatten()[self.idx].clone())  # (kept,)
        self.bias = nn.Parameter(linear.bias.detach().clone())  # (d_out,), not pruned

    def weight(self) -> torch.Tensor:
        W = self.values.new_zeros(math.prod(self.shape)).scatter(0, self.idx, self.values)  # (d_out * d_in,)
        return W.view(self.shape)  # (d_out, d_in), zero where pruned

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), self.bias)


def scores(model: nn.Module, linears: list[nn.Linear], criterion: str, g: torch.Generator,
           data: Iterable[dict[str, torch.Tensor]] | None) -> list[torch.Tensor]:
    """One score per weight entry of each adapter projection."""
    if criterion == "magnitude":
        return [lin.weight.detach().abs() for lin in linears]
    if criterion == "random":
        return [torch.rand(lin.weight.shape, generator=g) for lin in linears]
    if criterion != "snip":
        raise ValueError(f"unknown criterion '{criterion}'; use snip, magnitude or random")
    if data is None:
        raise ValueError("SNIP scores the weights on task data: pass `data` (an iterable of batches) to apply()")
    saliency = [torch.zeros_like(lin.weight) for lin in linears]
    was_training = model.training
    model.eval()  # deterministic forward (no dropout) for the connection sensitivity
    for batch in data:  # gradients summed over the batches before the magnitude, as the authors' SNIP.score
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        for s, lin in zip(saliency, linears):
            s += (lin.weight.grad * lin.weight).detach()  # ∂L/∂w ⊙ w of this batch
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return [s.abs() for s in saliency]  # |Σ_batches ∂L/∂w ⊙ w|


def apply(model: nn.Module, config: SparseAdapterConfig,
          data: Iterable[dict[str, torch.Tensor]] | None = None) -> nn.Module:
    freeze_base(model)
    g = torch.Generator().manual_seed(config.seed)
    adapters: list[tuple[str, SequentialAdapter]] = []
    for t in find_targets(model, config.target_modules):
        wrapper = SequentialAdapter(t.module, config.bottleneck, config.activation)
        a: Bottleneck = wrapper.adapter
        with torch.no_grad():  # Houlsby's near-identity init, from the config's generator
            nn.init.kaiming_uniform_(a.down.weight, a=math.sqrt(5), generator=g)
            a.down.bias.uniform_(-1 / math.sqrt(a.down.in_features), 1 / math.sqrt(a.down.in_features), generator=g)
            a.up.weight.normal_(0.0, 0.01, generator=g)  # nonzero: SNIP needs w ≠ 0 and a gradient through W_up
        replace_module(model, t.name, wrapper)
        adapters.append((t.name, wrapper))
    linears = [lin for _, w in adapters for lin in (w.adapter.down, w.adapter.up)]
    S = scores(model, linears, config.criterion, g, data)
    flat = torch.cat([s.flatten() for s in S])  # (W,), all adapter weights: global pruning
    keep = flat.numel() - n_pruned(flat.numel(), config.sparsity)
    mask_flat = torch.zeros_like(flat, dtype=torch.bool)
    mask_flat[flat.topk(keep).indices] = True  # exactly `keep` entries, ties broken by topk
    masks = iter(mask_flat.split([s.numel() for s in S]))
    for _, wrapper in adapters:
        a = wrapper.adapter
        a.down = SparseLinear(a.down, next(masks).view(a.down.weight.shape))
        a.up = SparseLinear(a.up, next(masks).view(a.up.weight.shape))
    return model
