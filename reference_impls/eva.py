"""EVA: Explained Variance Adaptation (LoRA initialised from the principal directions of each layer's inputs).

Equation:   X_l = the inputs of targeted layer l on some data (tokens × d_in, padding and ignored labels removed)
            X_l − mean = U Σ Vᵀ (incremental PCA over minibatches),   A_l = V_l[:, :r_l]ᵀ,   B_l = 0
            h = W0 x + (alpha / r) B_l A_l x        (alpha / r kept for every r_l, peft's adjust_scaling_factors)
            r_l: the budget r · (number of targeted layers) goes to the largest explained-variance ratios
            σ_i² / Σ var over all layers' first round(rho · r) components; so 0 <= r_l <= round(rho · r)
Trainable:  Σ_l r_l (d_in + d_out); with rho = 1 every r_l = r, the catalog's r * (d_in + d_out) per target
Paper:      "Parameter Efficient Fine-tuning via Explained Variance Adaptation", Fabian Paischer et al., 2025
            (NeurIPS 2025), arXiv 2410.07170.

A starts in the directions that carry most of the variance of what the layer actually sees, and the ranks go
where the explained variance is; B = 0, so the adapted model starts equal to the base model. Layers that get
r_l = 0 are left unadapted. After the init EVA is LoRA (reference_impls/lora.py): the update merges into W0.

The incremental PCA: each minibatch is centred and stacked under the current Σ Vᵀ and a mean-correction row
(scikit-learn's IncrementalPCA), and its top right-singular vectors come from torch.svd_lowrank (q = 2
components, 4 power iterations, seed 42), signs fixed so that each vector's largest entry is positive. A layer
stops updating once the cosine similarity of each of its first r_l vectors between two consecutive minibatches
is at least tau; the data loader is cycled until every layer has. Layers whose inputs are identical (q, k, v
after one norm) share one PCA; within such a group the first layer gets the largest rank.

Data: pass `data` (a sized iterable of batches with input_ids, optional attention_mask and labels; label
-100 marks ignored tokens) to apply(). Without data the built-in synthetic task is used, meaningful only for tests.

Checked against: the paper (Sec. 3: incremental SVD of activations, explained-variance rank redistribution
bounded by rho, tau-based stopping); peft 0.21.2 `peft/tuners/lora/eva.py` (_get_eva_state_dict: hashes of
the first batch's inputs, round(r · rho) components, the rank budget, the convergence loop,
_get_rank_distribution; _load_eva_state_dict: rank 0 removes the adapter, alpha · r_l / r) and
`peft/utils/incremental_pca.py` (partial_fit, svd_flip on V): ranks and A agree with peft's
initialize_lora_eva_weights on the same weights and data (test_eva.py). Not covered: whitening (off in peft).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import cycle
from typing import Iterable

import torch
from torch import nn

from reference_impls._core import find_targets, freeze_base, replace_module, synthetic_batch
from reference_impls.lora import LoRALinear

Batch = dict[str, torch.Tensor]
SVD_SEED, POWER_ITERATIONS = 42, 4  # peft's SVDHook: IncrementalPCA(lowrank=True, lowrank_seed=42), niter 4


@dataclass
class EvaConfig:
    r: int = 8                         # average rank: the budget is r times the number of targeted layers
    alpha: float = 8                   # the update is scaled by alpha / r (LoRA's default lora_alpha)
    rho: float = 2.0                   # a layer gets at most round(rho * r) ranks; 1: no redistribution
    tau: float = 0.99                  # stop a layer's PCA once consecutive components have cosine >= tau
    target_modules: tuple[str, ...] = ("q", "v")


class IncrementalPCA:
    """Top-k right-singular vectors of a centred stream of rows, one minibatch at a time."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.seen = 0
        self.mean: torch.Tensor | None = None      # (d,) float64
        self.var: torch.Tensor | None = None       # (d,) float64
        self.components: torch.Tensor | None = None  # (k, d)
        self.singular_values: torch.Tensor | None = None  # (k,)
        self.variance_ratio: torch.Tensor | None = None   # (k,)

    def partial_fit(self, X: torch.Tensor) -> None:  # X: (n, d)
        X = X.float().clone()
        n = X.shape[0]
        total = self.seen + n
        batch_sum = X.sum(0, dtype=torch.float64)  # (d,)
        old_sum = torch.zeros_like(batch_sum) if self.mean is None else self.mean * self.seen
        mean = (old_sum + batch_sum) / total
        centred = X - batch_sum / n
        batch_ss = centred.square().sum(0, dtype=torch.float64) - centred.sum(0, dtype=torch.float64).square() / n
        if self.var is None:
            var = batch_ss / total
        else:  # Chan et al.'s pairwise update of the sum of squares
            ratio = self.seen / n
            var = (self.var * self.seen + batch_ss + ratio / total * (old_sum / ratio - batch_sum).square()) / total
        if self.components is None:
            X -= mean
        else:
            batch_mean = X.mean(0)
            X -= batch_mean
            correction = ((self.seen / total) * n) ** 0.5 * (self.mean - batch_mean)  # (d,) float64
            X = torch.vstack((self.singular_values[:, None] * self.components, X, correction))  # (k + n + 1, d)
        with torch.random.fork_rng():
            torch.manual_seed(SVD_SEED)
            _, S, V = torch.svd_lowrank(X, q=2 * self.k, niter=POWER_ITERATIONS)  # V: (d, q)
        Vt = V.mH
        signs = torch.sign(Vt[range(Vt.shape[0]), Vt.abs().argmax(1)])  # largest entry of each vector positive
        Vt = Vt * signs[:, None]
        self.seen, self.mean, self.var = total, mean, var
        self.components, self.singular_values = Vt[:self.k], S[:self.k]
        self.variance_ratio = (S.square() / (var * total).sum())[:self.k]


def _rows(layer_input: torch.Tensor, batch: Batch) -> torch.Tensor:
    """(tokens, d_in): the positions with attention_mask = 1 and label != -100, as peft's language-modeling hook."""
    mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).bool()
    if "labels" in batch:
        mask = mask & (batch["labels"] != -100)
    return layer_input[mask.nonzero().T.unbind()]


def _capture(model: nn.Module, names: list[str], batch: Batch) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda m, inp, out, n=n: seen.__setitem__(n, inp[0].detach())) for n in names]
    try:
        model(**batch)
    finally:
        for h in hooks:
            h.remove()
    return seen


@torch.no_grad()
def eva_components(model: nn.Module, names: list[str], data: Iterable[Batch], r: int, rho: float,
                   tau: float) -> dict[str, torch.Tensor]:
    """Layer name -> A (r_l, d_in), r_l >= 0, computed on the frozen model."""
    was_training = model.training
    model.eval()
    first = _capture(model, names, next(iter(data)))
    groups: dict[str, str] = {}  # layer -> the first layer with the same inputs (that one runs the PCA)
    for n in names:
        groups[n] = next((g for g in dict.fromkeys(groups.values()) if torch.equal(first[g], first[n])), n)
    heads = list(dict.fromkeys(groups.values()))
    k = round(r * rho)
    if any(first[n].shape[-1] < k for n in names):
        raise ValueError(f"EVA keeps round(rho * r) = {k} components, more than the input width of a targeted layer")
    pca = {h: IncrementalPCA(k) for h in heads}
    converged = {h: torch.zeros(k, dtype=torch.bool) for h in heads}
    done = dict.fromkeys(heads, False)
    order = heads + [n for h in heads for n in names if groups[n] == h != n]  # peft's order of the candidates
    ranks = dict.fromkeys(names, k)
    budget = r * len(names)
    for batch in cycle(data):
        for h in heads:
            done[h] = bool(converged[h][:ranks[h]].all())
        if all(done.values()):
            break
        inputs = _capture(model, [h for h in heads if not done[h]], batch)
        for h, x in inputs.items():
            X = _rows(x, batch)
            if X.shape[0] < k:
                continue  # fewer tokens than components: peft skips this step
            before = pca[h].components
            pca[h].partial_fit(X)
            if before is not None:
                converged[h] = torch.cosine_similarity(pca[h].components, before) >= tau
        if all(pca[h].components is not None for h in heads):
            ranks = _distribute(order, groups, pca, budget)
    model.train(was_training)
    return {n: pca[groups[n]].components[:ranks[n]] for n in names}


def _distribute(order: list[str], groups: dict[str, str], pca: dict[str, IncrementalPCA], budget: int) -> dict:
    """The `budget` largest explained-variance ratios over all layers; a layer's rank is how many are its own."""
    keys, values = zip(*[(n, v) for n in order for v in pca[groups[n]].variance_ratio])
    top = torch.stack(values).argsort(descending=True)[:budget]
    counts = Counter(keys[i] for i in top)
    ranks = {n: counts.get(n, 0) for n in order}
    for n in order:  # within a group of equal inputs the PCA's own layer takes the largest rank
        head = groups[n]
        if head != n and ranks[head] < ranks[n]:
            ranks[head], ranks[n] = ranks[n], ranks[head]
    return ranks


def apply(model: nn.Module, config: EvaConfig, data: Iterable[Batch] | None = None) -> nn.Module:
    if config.rho < 1 or not 0 <= config.tau <= 1:
        raise ValueError(f"EVA needs rho >= 1 and 0 <= tau <= 1, got rho={config.rho}, tau={config.tau}")
    freeze_base(model)
    names = [t.name for t in find_targets(model, config.target_modules)]
    batches = list(data) if data is not None else [synthetic_batch(model)]
    if not batches:
        raise ValueError("EVA needs at least one batch of data")
    components = eva_components(model, names, batches, config.r, config.rho, config.tau)
    for name in names:
        A = components[name]  # (r_l, d_in)
        if A.shape[0] == 0:
            continue  # no rank for this layer: it stays the frozen base layer
        r_l = A.shape[0]
        layer = LoRALinear(model.get_submodule(name), r_l, config.alpha * r_l / config.r)  # scaling alpha / r
        with torch.no_grad():
            layer.A.copy_(A)  # B stays 0: the model starts unchanged
        replace_module(model, name, layer)
    return model
