"""OSF: Orthogonal Subspace Fine-tuning ("Sculpting Subspaces"), constrained full fine-tuning for continual learning.

Equation:   W0 = U_high S_high V_high + U_low S_low V_low  (SVD split after the top k = effective_rank directions)
            W = U_high S_high V_high (frozen) + U S V  with U, S, V trained, starting at U_low, S_low, V_low;
            h = W0 x + (U S V − U_low S_low V_low) x
            gradients:  ∇U ← (I − U_high U_highᵀ) ∇U,   ∇V ← ∇V (I − V_highᵀ V_high)
Trainable:  t * (d_in + d_out + 1) per targeted module, t = min(d_in, d_out) - k; the catalog formula takes t =
            trainable_rank, or the default k = min(d_in, d_out) // 2 when it is 0   (trainable_params.per_target)
Paper:      "Sculpting Subspaces: Constrained Full Fine-Tuning in LLMs for Continual Learning", Nikhil Shivakumar
            Nayak et al., 2026 (ICLR 2026), arXiv 2504.07097.

The top singular directions hold what earlier tasks need and stay frozen; the t = min(d_in, d_out) − k
low directions are trained as full factors U (d_out × t), S (t), V (t × d_in), and the gradients of U and V
are projected to stay orthogonal to the frozen U_high, V_high, so a new task interferes little with the
old ones. Where U_low and U_high together form a full basis (d_out <= d_in) the projection is written, as
in peft, as the projection onto the initial U_low (U_low U_lowᵀ ∇U); likewise for V when d_in <= d_out.
The trained factors start at the SVD's, so the update starts at zero and the model starts equal to the
base model; U S V − U_low S_low V_low merges into W0.

effective_rank: None gives min(d_in, d_out) // 2 (peft's default); a float in (0, 1] is a fraction of
min(d_in, d_out); an int is used as is (capped at min(d_in, d_out)). trainable_rank t > 0 instead freezes
min(d_in, d_out) - t directions in every matrix, whatever its shape: what peft's rank_pattern does when it maps
each module to min(d_in, d_out) - t (peft's MetaMathQA suite's rank128 run).

Checked against: the paper's method section (SVD of each weight, frozen high-rank subspace, updates of the
low subspace kept orthogonal to it by projecting the gradients); peft 0.21.2 `peft/tuners/osf/layer.py`
(update_layer, the gradient hooks, get_delta_weight, forward), `utils.py` (decompose_weight_matrix) and
`model.py` (_resolve_rank); the oracle tests compare outputs, projected gradients and merged weights with
peft's OSFModel.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import AdditiveUpdate, Target, freeze_base, linear_dims, linear_weight, replace_modules


@dataclass
class OSFConfig:
    effective_rank: int | float | None = None     # frozen top directions per matrix (None: min(d_in, d_out) // 2)
    trainable_rank: int = 0                       # t > 0: train t directions per matrix (wins over effective_rank)
    target_modules: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")  # every linear layer of a block


def frozen_rank(value: int | float | None, min_dim: int) -> int:
    if value is None:
        return min_dim // 2
    k = int(min_dim * value) if isinstance(value, float) and 0 < value <= 1 else int(value)
    return max(min(min_dim, k), 0)


class OSFLinear(AdditiveUpdate):
    def __init__(self, t: Target, effective_rank: int | float | None = None, trainable_rank: int = 0) -> None:
        super().__init__()
        d_in, d_out = linear_dims(t.module)
        k = min(d_in, d_out) - trainable_rank if trainable_rank > 0 else frozen_rank(effective_rank, min(d_in, d_out))
        if k <= 0:
            raise ValueError(f"OSF: effective_rank {effective_rank} / trainable_rank {trainable_rank} freezes no "
                             f"direction of {t.name}")
        self.base = t.module
        U, S, Vh = torch.linalg.svd(linear_weight(t.module).detach().float(), full_matrices=False)
        self.register_buffer("U0", U[:, k:].contiguous())   # (d_out, t) the initial low factors, frozen copies
        self.register_buffer("S0", S[k:].contiguous())      # (t,)
        self.register_buffer("V0", Vh[k:].contiguous())     # (t, d_in)
        self.register_buffer("U_high", U[:, :k].contiguous())  # (d_out, k)
        self.register_buffer("V_high", Vh[:k].contiguous())    # (k, d_in)
        # trained copies of the low factors: U S V = U0 S0 V0 at init, so the update starts at zero
        self.U, self.S, self.V = (nn.Parameter(self.U0.clone()), nn.Parameter(self.S0.clone()),
                                  nn.Parameter(self.V0.clone()))
        self.U.register_hook(self._project_U)
        self.V.register_hook(self._project_V)
        self.merged = False

    def _project_U(self, grad: torch.Tensor) -> torch.Tensor:  # (d_out, t): keep ∇U orthogonal to U_high
        if self.U0.shape[0] <= self.V0.shape[1]:  # d_out <= d_in: (U_high | U0) is a full basis
            return self.U0 @ (self.U0.T @ grad)
        return grad - self.U_high @ (self.U_high.T @ grad)

    def _project_V(self, grad: torch.Tensor) -> torch.Tensor:  # (t, d_in): keep ∇V orthogonal to V_high
        if self.U0.shape[0] >= self.V0.shape[1]:  # d_in <= d_out: (V_high ; V0) is a full basis
            return (grad @ self.V0.T) @ self.V0
        return grad - (grad @ self.V_high.T) @ self.V_high

    def delta_weight(self) -> torch.Tensor:
        return (self.U * self.S) @ self.V - (self.U0 * self.S0) @ self.V0  # (d_out, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)  # (B, T, d_out)
        if self.merged:
            return h
        z = F.linear(x, torch.cat([self.V, self.V0]))                        # (B, T, 2t)
        return h + F.linear(z, torch.cat([self.U * self.S, -(self.U0 * self.S0)], dim=1))  # (B, T, d_out)


def apply(model: nn.Module, config: OSFConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules,
                    lambda t: OSFLinear(t, config.effective_rank, config.trainable_rank))
    return model
