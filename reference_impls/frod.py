"""FRoD: full-rank fine-tuning in a basis shared across layers, with sparse "rotational" coefficients.

Equation:   W' = U (Λ + S) Vᵀ,   h = W' x + b                 (the adapted weight replaces W)
            V ∈ R^{d_in × d_in}: one basis per role (all q projections, all v projections, ...), from a
                 joint decomposition of the weights W_1..W_L of that role in every layer (below), frozen;
            U ∈ R^{d_out × d_in}, Λ0: per layer, from B = W V^{-T} (so W = B Vᵀ): Λ0 = the column norms of
                 B, U = B with its columns divided by them, frozen; so W = U Λ0 Vᵀ
            Λ = diag(λ), λ ∈ R^{d_in} trainable, starts at Λ0 (the model starts equal to the base model)
            S ∈ R^{d_in × d_in} trainable only at k fixed random off-diagonal positions, starts at 0,
                 k = max(1, floor(sparse_rate · d_in²))
            joint decomposition: stack the role's weights, [W_1; ..; W_L] ∈ R^{L d_out × d_in}. With fewer rows
                 than columns, V = the right singular vectors. Otherwise QR = [W_1; ..; W_L], Q_l = the rows of
                 Q for layer l, T = mean_l (Q_lᵀ Q_l + α I)^{-1} (α = regularization_alpha), E = the
                 eigenvectors of T, and V = Rᵀ E.
Trainable:  d_in + max(1, floor(d_in² · sparse_rate)) per targeted module  (catalog: trainable_params.per_target)
Paper:      "FRoD: Full-Rank Efficient Fine-Tuning with Rotational Degrees for Fast Convergence", Guoan Wan et
            al., 2025 (AAAI 2026), arXiv 2512.23485.

A role is named as peft names it, from the last two components of the module name (the last one if the one
before it is a block index), BERT's attention.output.dense being "attention_output"; a module's layer is the
number after "layers" in its name, else the first number in it. The sparse positions are drawn with one
generator seeded by projection_prng_key, role by role in sorted order of the role names, as peft does, so
the two draw the same positions. With dropout, h = W x + b + (W' - W) dropout(x).

Deviation to know about (peft's, reproduced): modules are grouped by (layer number, role), so in T5 the
encoder's and decoder's blocks with the same number and role collide and only the decoder's weight of each
pair enters the shared basis (the encoder layer still gets its own U and Λ0 from that basis). save_projection
is peft's checkpoint option; here V, U, Λ0 and the positions are buffers rebuilt by apply() from the same
base weights and seed, so save_trainable stores only λ and the values of S.

Checked against: the paper (hierarchical joint decomposition into a basis shared across layers; the
diagonal scaling plus sparse off-diagonal "rotational degrees", full-rank update); peft 0.21.2
`peft/tuners/frod/model.py` (_projection_from_weights, the role and layer keys, the seeded COO pattern)
and `layer.py` (_calculate_frod_u_and_lambda with a float64 solve, forward and get_delta_weight); the oracle
test compares bases, outputs, gradients, counts and merges with FrodModel on tiny Llama, BERT and T5. Numeric pin:
test_frod.py recomputes W' = U (Λ + S) Vᵀ on a small layer and checks W = U Λ0 Vᵀ.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import Wrapper, find_targets, freeze_base, linear_weight, replace_module


@dataclass
class FRoDConfig:
    sparse_rate: float = 0.01              # share of the d_in² entries of S that are trainable (at least one)
    regularization_alpha: float = 0.001    # ridge term α inside the joint decomposition's inverses
    dropout: float = 0.0                   # dropout on the input of the FRoD branch
    projection_prng_key: int = 0           # seed of the sparse positions of S
    save_projection: bool = True           # peft's checkpoint option; bases are rebuilt here (see docstring)
    target_modules: tuple[str, ...] = ("q", "v")


def role_key(name: str) -> str:
    parts = name.split(".")
    if len(parts) == 1:
        return parts[0]
    if parts[-2].isdigit():
        return parts[-1]
    if parts[-2:] == ["output", "dense"] and len(parts) >= 3 and parts[-3] == "attention":
        return "attention_output"  # BERT: keep the attention output apart from the FFN's output.dense
    return f"{parts[-2]}_{parts[-1]}"


def layer_key(name: str, fallback: int) -> int:
    parts = name.split(".")
    if "layers" in parts and parts.index("layers") + 1 < len(parts) and parts[parts.index("layers") + 1].isdigit():
        return int(parts[parts.index("layers") + 1])
    return next((int(p) for p in parts if p.isdigit()), fallback)


def shared_basis(weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """V (d_in, d_in) from the weights (d_out_l, d_in) of one role in every layer."""
    stacked = torch.cat(weights, dim=0)  # (Σ d_out_l, d_in)
    if stacked.shape[0] < stacked.shape[1]:
        return torch.linalg.svd(stacked, full_matrices=True)[2].T  # right singular vectors
    Q, R = torch.linalg.qr(stacked)  # Q: (Σ d_out_l, d_in), R: (d_in, d_in)
    d = R.shape[1]
    T, start = torch.zeros(d, d), 0
    for W in weights:
        Q_l = Q[start:start + W.shape[0]]  # this layer's rows of Q
        T += torch.linalg.inv(Q_l.T @ Q_l + alpha * torch.eye(d))
        start += W.shape[0]
    T /= len(weights)
    return R.T @ torch.linalg.eigh(T)[1]


def sparse_positions(d: int, rate: float, g: torch.Generator) -> torch.Tensor:
    """(2, k) row and column indices of k = max(1, floor(rate d²)) off-diagonal entries (0 for rate 0)."""
    rows, cols = torch.meshgrid(torch.arange(d), torch.arange(d), indexing="ij")
    off = torch.stack([rows.flatten(), cols.flatten()], dim=1)
    off = off[off[:, 0] != off[:, 1]]  # (d² - d, 2), row-major
    k = min(int(d * d * rate), off.shape[0])
    if rate > 0 and off.shape[0] > 0:
        k = max(1, k)
    if k == 0:
        return torch.empty(2, 0, dtype=torch.long)
    return off[torch.randperm(off.shape[0], generator=g)[:k]].t().contiguous()


class FRoDLinear(Wrapper):
    def __init__(self, base: nn.Module, V: torch.Tensor, positions: torch.Tensor, dropout: float) -> None:
        super().__init__()
        self.base = base
        W = linear_weight(base).detach()  # (d_out, d_in)
        Bm = torch.linalg.solve(V.double(), W.double().T).T  # B = W V^{-T}: (d_out, d_in), so W = B Vᵀ
        lam0 = torch.linalg.norm(Bm, dim=0)  # (d_in,)
        U = torch.zeros_like(Bm)
        nz = lam0 > 1e-12
        U[:, nz] = Bm[:, nz] / lam0[nz]  # unit columns
        self.register_buffer("V", V.to(W.dtype))                       # (d_in, d_in), shared by the role
        self.register_buffer("U", U.to(W.dtype))                       # (d_out, d_in)
        self.register_buffer("positions", positions)                   # (2, k)
        self.lam = nn.Parameter(lam0.to(W.dtype))                      # (d_in,): Λ starts at Λ0, so W' = W
        self.s = nn.Parameter(torch.zeros(positions.shape[1], dtype=W.dtype))  # (k,): S starts at 0
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.W0: torch.Tensor | None = None  # the base weight while merged

    def S(self) -> torch.Tensor:  # (d_in, d_in), zero outside the positions
        d = self.V.shape[0]
        return torch.zeros(d, d, dtype=self.s.dtype, device=self.s.device).index_put(tuple(self.positions), self.s)

    def adapted_weight(self) -> torch.Tensor:  # W' = U (Λ + S) Vᵀ: (d_out, d_in)
        return self.U @ (torch.diag(self.lam) + self.S()) @ self.V.T

    def branch(self, x: torch.Tensor) -> torch.Tensor:  # W' x without the bias, computed through the basis
        z = x @ self.V  # Vᵀ x: (B, T, d_in)
        z = z * self.lam + z @ self.S().T  # (Λ + S) Vᵀ x
        return F.linear(z, self.U)  # (B, T, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        if self.W0 is not None:
            return self.base(x)
        bias = self.base.bias
        if isinstance(self.dropout, nn.Identity) or not self.training:
            h = self.branch(x)  # W' replaces W
            return h if bias is None else h + bias
        xd = self.dropout(x)
        return self.base(x) + self.branch(xd) - F.linear(xd, linear_weight(self.base))

    @torch.no_grad()
    def merge(self) -> None:
        if self.W0 is None:
            W = linear_weight(self.base)
            self.W0 = W.detach().clone()
            W.copy_(self.adapted_weight())

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.W0 is not None:
            linear_weight(self.base).copy_(self.W0)
            self.W0 = None


def apply(model: nn.Module, config: FRoDConfig) -> nn.Module:
    freeze_base(model)
    targets = find_targets(model, config.target_modules)
    by_role: dict[str, dict[int, torch.Tensor]] = defaultdict(dict)  # role -> layer -> W (d_out, d_in)
    for i, t in enumerate(targets):
        by_role[role_key(t.name)][layer_key(t.name, i)] = linear_weight(t.module).detach().float()
    g = torch.Generator().manual_seed(config.projection_prng_key)
    basis, positions = {}, {}
    for role in sorted(by_role):  # sorted: the generator's draws follow the role names, as in peft
        layers = by_role[role]
        basis[role] = shared_basis([layers[k] for k in sorted(layers)], config.regularization_alpha)
        positions[role] = sparse_positions(basis[role].shape[0], config.sparse_rate, g)
    for t in targets:
        role = role_key(t.name)
        replace_module(model, t.name, FRoDLinear(t.module, basis[role], positions[role], config.dropout))
    return model
