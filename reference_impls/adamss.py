"""AdaMSS: Adaptive Multi-Subspace Approach (per-cluster low-rank updates inside W's top singular subspace).

Equation:   W' = [W | b] ∈ R^{d_out × d_in'} (d_in' = d_in + 1 with a bias, else d_in),   W' ≈ U Σ Vᵀ (top R),
            R = min(r, d_out, d_in');  the output rows are clustered into K groups G_k by their rows of U (K-means)
            h = W' [x; 1] + scatter_k ( B_k A_k Vᵀ [x; 1] ),   A_k ∈ R^{s_k × R},  B_k ∈ R^{|G_k| × s_k}
            s_k = min(|G_k|, subspace_rank),  K = min(num_subspaces, d_out)
Trainable:  Σ_k s_k (R + |G_k|); with subspace_rank = 1: K·R + d_out per targeted module
            (catalog: num_subspaces * subspace_rank * min(r, d_in, d_out) + subspace_rank * d_out)
Paper:      "AdaMSS: Adaptive Multi-Subspace Approach for Parameter-Efficient Fine-Tuning", Jingjing Zheng et al.,
            2025 (NeurIPS 2025), https://openreview.net/forum?id=8ZdWmpYxT0.

Rows of W whose left singular vectors are alike share a subspace, and each subspace learns its own rank-s_k
update, confined to the frozen top-R right-singular directions Vᵀ of W (with the bias as an extra input column,
so the bias is adapted too). A_k starts as the top right-singular directions of that cluster's rows of U
(orthonormal rows), B_k = 0, so the adapted model starts equal to the base model. The update is linear in
[x; 1]: it merges into W and b.

Decomposition and clustering as peft does them, so that both find the same subspaces: the SVD is
torch.svd_lowrank(W', q=R, niter=2) under seed `random_seed`; K-means is Lloyd's algorithm on the rows of U with
scikit-learn's "random" start (K distinct rows drawn by numpy's RandomState(123456789).choice, on data centred
by its mean), at most 10 iterations, stopping when no label changes or the centres move less than 1e-4 times
the mean feature variance, an empty cluster taking the point farthest from its centre. Cluster k is the set of
rows labelled k. A_k is computed exactly (SVD) where peft uses a randomized SVD and a QR step: same subspace.
With R = d_out (a square, full-rank U, as on a 32-wide model with the default r = 100) the rows of U are
orthonormal, so every row is equally far from every other and the clusters are decided by rounding; they can
then differ from peft's. With R < d_out (any real model at r = 100) they are the same.

Not implemented: adaptive subspace allocation (use_asa, off by default in peft), which scores subspaces by an
EMA of |θ · ∇θ| during training and freezes all but asa_target_subspaces of them; apply() refuses use_asa=True.
Also not covered: peft's use_dynamic_rank option. nn.Linear only, as peft (GPT-2's Conv1D is refused).

Checked against: the OpenReview paper (multi-subspace decomposition, clustering of the left singular vectors,
per-subspace low-rank updates, ASA described but not implemented here); peft 0.21.2 `peft/tuners/adamss/layer.py`
(update_layer: the bias column, slice_pca, clustering_Z, seg_locations, zero B; forward's scatter; merge into
weight and bias) and `utils.py`: clusters, outputs, gradients, counts and merges agree on tiny Llama, BERT and
T5 (test_adamss.py); the clustering equals scikit-learn's KMeans with peft's arguments.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import Wrapper, freeze_base, replace_modules

KMEANS_SEED, KMEANS_ITERATIONS, KMEANS_TOL = 123456789, 10, 1e-4  # peft's clustering_Z arguments to KMeans
SVD_POWER_ITERATIONS = 2  # peft's slice_pca: torch.svd_lowrank(..., niter=2)


@dataclass
class AdamssConfig:
    r: int = 100                       # rank R of the truncated SVD (clamped to d_out and d_in')
    num_subspaces: int = 5             # K-means clusters of output rows (at most d_out)
    subspace_rank: int = 1             # rank of each cluster's update B_k A_k
    use_asa: bool = False              # adaptive subspace allocation: not implemented here (refused)
    asa_target_subspaces: int = 50     # subspaces ASA would keep across the model (unused without ASA)
    random_seed: int = 0               # seed of the randomized SVD (peft's random_seed)
    target_modules: tuple[str, ...] = ("q", "v")


def kmeans(X: np.ndarray, k: int) -> np.ndarray:
    """Labels (n,) of Lloyd's K-means on the rows of X (n, m), started and stopped as scikit-learn's KMeans(init=
    "random", n_init=1, max_iter=10, random_state=123456789) does."""
    X = X.astype(np.float32)
    tol = float(np.var(X, axis=0).mean()) * KMEANS_TOL
    X = X - X.mean(axis=0)
    n = len(X)
    weights = np.ones(n, dtype=np.float32)
    centres = X[np.random.RandomState(KMEANS_SEED).choice(n, size=k, replace=False, p=weights / weights.sum())]

    def assign(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = (c * c).sum(1)[None, :] - 2 * X @ c.T  # (n, k): ‖x − c‖² up to the per-row ‖x‖²
        labels = d.argmin(1)
        return labels, ((X - c[labels]) ** 2).sum(1)

    labels_old = np.full(n, -1)
    converged = False
    for _ in range(KMEANS_ITERATIONS):
        labels, dist = assign(centres)
        sums = np.zeros_like(centres)
        np.add.at(sums, labels, X)
        counts = np.bincount(labels, minlength=k).astype(np.float32)
        empty = np.flatnonzero(counts == 0)
        if len(empty):  # each empty cluster takes one of the points farthest from their centres
            for e, far in zip(empty, np.argsort(-dist, kind="stable")[:len(empty)]):
                sums[labels[far]] -= X[far]
                counts[labels[far]] -= 1
                sums[e], counts[e] = X[far], 1
        new = sums / counts[:, None]
        shift = ((new - centres) ** 2).sum()
        centres = new
        if np.array_equal(labels, labels_old):
            converged = True
            break
        if shift <= tol:
            break
        labels_old = labels
    return labels if converged else assign(centres)[0]


class AdamssLinear(Wrapper):
    def __init__(self, base: nn.Linear, r: int, num_subspaces: int, subspace_rank: int, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise NotImplementedError(f"AdaMSS wraps nn.Linear layers (as peft does), not {type(base).__name__}")
        self.base = base
        W = base.weight.detach().float()  # (d_out, d_in)
        if base.bias is not None:
            W = torch.cat((W, base.bias.detach().float()[:, None]), dim=1)  # (d_out, d_in + 1): bias as a column
        d_out, d_in1 = W.shape
        R = min(r, d_out, d_in1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            U, _, V = torch.svd_lowrank(W, q=R, niter=SVD_POWER_ITERATIONS)  # U: (d_out, R), V: (d_in', R)
        self.register_buffer("Vt", V[:, :R].T.contiguous())  # (R, d_in'): frozen top right-singular directions
        labels = torch.from_numpy(kmeans(U[:, :R].numpy(), min(num_subspaces, d_out))).long()  # (d_out,)
        groups = [torch.where(labels == k)[0] for k in range(int(labels.max()) + 1)]
        self.register_buffer("rows", torch.cat(groups))  # (d_out,): output row of each stacked update row
        self.A, self.B = nn.ParameterList(), nn.ParameterList()
        for g in groups:
            s = min(len(g), subspace_rank)
            _, _, Vh = torch.linalg.svd(U[g, :R], full_matrices=False)  # the cluster's own top directions
            self.A.append(nn.Parameter(Vh[:s].contiguous()))       # (s, R), orthonormal rows
            self.B.append(nn.Parameter(torch.zeros(len(g), s)))    # (|G_k|, s); zero: ΔW = 0 at init
        self.merged = False

    def _with_one(self, x: torch.Tensor) -> torch.Tensor:  # (..., d_in) -> (..., d_in')
        if self.base.bias is None:
            return x
        return torch.cat((x, x.new_ones(*x.shape[:-1], 1)), dim=-1)

    def delta_weight(self) -> torch.Tensor:  # (d_out, d_in'): the update of [W | b]
        stacked = torch.cat([B @ A @ self.Vt for A, B in zip(self.A, self.B)])  # rows in cluster order
        return torch.zeros_like(stacked).index_copy(0, self.rows, stacked)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)  # (B, T, d_out)
        if self.merged:
            return h
        p = F.linear(self._with_one(x), self.Vt)  # (B, T, R)
        stacked = torch.cat([F.linear(F.linear(p, A), B) for A, B in zip(self.A, self.B)], dim=-1)  # (B, T, d_out)
        return h + torch.zeros_like(stacked).index_copy(-1, self.rows, stacked)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            delta = self.delta_weight()
            self.base.weight.add_(delta[:, :self.base.in_features])
            if self.base.bias is not None:
                self.base.bias.add_(delta[:, -1])
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            delta = self.delta_weight()
            self.base.weight.sub_(delta[:, :self.base.in_features])
            if self.base.bias is not None:
                self.base.bias.sub_(delta[:, -1])
            self.merged = False


def apply(model: nn.Module, config: AdamssConfig) -> nn.Module:
    if config.use_asa:
        raise NotImplementedError("AdaMSS's adaptive subspace allocation (use_asa=True) is not implemented in this "
                                  "reference; use use_asa=false (peft's default)")
    freeze_base(model)
    replace_modules(model, config.target_modules, lambda t: AdamssLinear(
        t.module, config.r, config.num_subspaces, config.subspace_rank, config.random_seed))
    return model
