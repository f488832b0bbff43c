"""RoAd: 2D Rotary Adaptation.

Equation:   h' = R (W0 x + b),  R block-sparse: within each group of g output features, feature i of the first
            half is paired with feature i of the second half and the pair (u, v) is rotated and scaled:
              u' = α_u cos θ_u · u − α_u sin θ_u · v
              v' = α_v sin θ_v · u + α_v cos θ_v · v
            road_1: one (θ, α) per pair (θ_u = θ_v, α_u = α_v): a scaled 2D rotation;
            road_2: one (θ, α) per feature; road_4: separate angles and scales for the cos and sin terms
Trainable:  d_out per targeted module for road_1 (catalog: trainable_params.per_target);
            2 * d_out for road_2, 4 * d_out for road_4
Paper:      "3-in-1: 2D Rotary Adaptation for Efficient Finetuning, Efficient Batching and Composability",
            Baohao Liao et al., 2024 (NeurIPS 2024), arXiv 2409.00119.

The adapter stores only angles and scales; unmerged it costs two element-wise products on the layer's
output (and each sample of a batch may carry its own adapter, the paper's efficient batching). Pairing
i with i + g/2 rather than neighbours is peft's layout (a "rotate half", as in rotary embeddings).
Initialisation: θ = 0, α = 1, so R = I and the adapted model starts equal to the base model. R is linear,
so it merges: W = R W0, b = R b0 (unmerge applies R^{-1}).

Checked against: the paper's method section (2D rotations of output feature pairs with learned angle and
scale, the three variants, merging into W); peft 0.21.2 `peft/tuners/road/layer.py` (_prepare_cols,
_apply_road, _get_delta_weight, Linear.merge); the oracle tests compare outputs, gradients and merged
weights with peft's RoadModel for all three variants.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._core import Wrapper, freeze_base, linear_dims, linear_weight, replace_modules

SIZES = {"road_1": 0.5, "road_2": 1, "road_4": 2}  # θ (and α) entries per output feature


@dataclass
class RoAdConfig:
    variant: str = "road_1"                       # road_1 | road_2 | road_4
    group_size: int = 64                          # features are paired within groups of this size
    target_modules: tuple[str, ...] = ("q", "v")  # roles or module-name suffixes


class RoAdLinear(Wrapper):
    def __init__(self, base: nn.Module, name: str, variant: str = "road_1", group_size: int = 64) -> None:
        super().__init__()
        _, d_out = linear_dims(base)
        if variant not in SIZES:
            raise ValueError(f"RoAd: unknown variant '{variant}'; choose {', '.join(SIZES)}")
        if group_size < 2 or group_size % 2 or d_out % group_size:
            raise ValueError(f"RoAd: group_size {group_size} must be even and divide d_out = {d_out} of {name}")
        self.base, self.variant, self.g, self.d_out = base, variant, group_size, d_out
        size = int(SIZES[variant] * d_out)
        # θ = 0, α = 1: R = I, so the wrapped layer starts identical to the base layer
        self.theta = nn.Parameter(torch.zeros(size))  # (size,)
        self.alpha = nn.Parameter(torch.ones(size))   # (size,)
        self.merged = False

    def coefficients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(c, s), each (d_out,): the cos and sin coefficients α cos θ and α sin θ of every output feature."""
        g = self.g
        if self.variant == "road_1":  # one (θ, α) per pair: repeat each group's g/2 values for its second half
            theta = self.theta.reshape(-1, g // 2).repeat_interleave(2, dim=0).flatten()  # (d_out,)
            alpha = self.alpha.reshape(-1, g // 2).repeat_interleave(2, dim=0).flatten()
            return alpha * theta.cos(), alpha * theta.sin()
        if self.variant == "road_2":
            return self.alpha * self.theta.cos(), self.alpha * self.theta.sin()
        theta = self.theta.reshape(-1, 2, g)  # road_4, per group: (cos angles | sin angles), likewise α
        alpha = self.alpha.reshape(-1, 2, g)
        return (alpha[:, 0] * theta[:, 0].cos()).flatten(), (alpha[:, 1] * theta[:, 1].sin()).flatten()

    def rotate(self, h: torch.Tensor) -> torch.Tensor:  # h: (..., d_out)
        c, s = self.coefficients()
        halves = h.reshape(*h.shape[:-1], -1, 2, self.g // 2)          # (..., d_out / g, 2, g/2): (u | v) per group
        u, v = halves[..., 0, :], halves[..., 1, :]
        partner = torch.stack((-v, u), dim=-2).reshape(h.shape)        # (−v | u)
        return h * c + partner * s                                     # (..., d_out)

    def rotation(self) -> torch.Tensor:
        """R as a (d_out, d_out) matrix: rotate() maps row vectors, so R is the transpose of rotate(I)."""
        return self.rotate(torch.eye(self.d_out, dtype=self.theta.dtype, device=self.theta.device)).T

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)  # (B, T, d_out)
        return h if self.merged else self.rotate(h)

    def _apply_matrix(self, M: torch.Tensor) -> None:
        W = linear_weight(self.base)  # (d_out, d_in) view
        W.copy_(M @ W)
        if self.base.bias is not None:
            self.base.bias.copy_(M @ self.base.bias)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self._apply_matrix(self.rotation())  # W = R W0, b = R b0
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self._apply_matrix(torch.linalg.inv(self.rotation()))
            self.merged = False


def apply(model: nn.Module, config: RoAdConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules,
                    lambda t: RoAdLinear(t.module, t.name, config.variant, config.group_size))
    return model
