"""Lily: Low-Rank Interconnected Adaptation across Layers (shared A per few layers, shared B experts, a router).

Equation:   z = A_g x ∈ R^r,   p = mean over the batch's tokens of softmax(R_l z) ∈ R^{num_b},
            h = W0 x + s z (Σ_e p_e B_e),   A_g ∈ R^{r × d_in},  R_l ∈ R^{num_b × r},  B_e ∈ R^{r × d_out}
            A_g is shared by stride_a adjacent layers, the experts B_1..B_num_b by all layers of one module type,
            the router R_l is each layer's own
Trainable:  r * d_in * ((n_layers + stride_a - 1) // stride_a) / n_layers + num_b * r + num_b * r * d_out / n_layers
            per targeted module (catalog: trainable_params.per_target; summed over one role's n_layers modules:
            ceil(n_layers / stride_a) A's, n_layers routers and one set of experts)
Paper:      "Low-Rank Interconnected Adaptation across Layers", Yibo Zhong et al., 2025 (Findings of ACL 2025),
            arXiv 2407.09946.

Instead of one (A, B) pair per layer, each layer's low-rank projection z can reach every B expert of its
module type, weighted by a learned router, so that the up-projections are interconnected across layers and
the update of a layer is not confined to its own rank-r subspace.

Routing as in peft: the router's softmax is averaged over every token of the batch, so each forward pass
mixes one up-projection Σ_e p_e B_e for the whole batch. Because the mix depends on the input, the update is
not a fixed matrix and does not merge. A and the routers start Kaiming-uniform, the experts at zero, so the
model starts unchanged.

Sharing groups follow peft: modules are grouped by the target that matched them and their weight shape (q
with q, v with v; two shapes never share), and the parameters are the same nn.Parameter objects, which
`model.parameters()` counts once.

Checked against: the paper (layer-shared A, globally shared B experts with a router); peft 0.21.2
`peft/tuners/lily/layer.py` (forward: softmax of router(A x), mean over batch and tokens, einsum with the
(num_b, r, d_out) experts, times scaling) and `model.py` (_post_injection_hook: A shared within blocks of
stride_A consecutive layers of a group, B from the group's first layer).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import Wrapper, find_targets, freeze_base, kaiming_uniform_, linear_dims, matches, replace_module


@dataclass
class LilyConfig:
    r: int = 32                   # rank of A and of each B expert
    stride_a: int = 1             # adjacent layers sharing one A
    num_b: int = 2                # B experts per module type
    scaling: float = 1.0          # multiplier of the update
    target_modules: tuple[str, ...] = ("q", "v")


class LilyLinear(Wrapper):
    def __init__(self, base: nn.Module, A: nn.Parameter, B: nn.Parameter, scaling: float) -> None:
        super().__init__()
        self.base, self.scaling = base, scaling
        self.A = A  # (r, d_in), shared with the other layers of its stride block
        self.B = B  # (num_b, r, d_out), shared with every layer of its group
        num_b, r, _ = B.shape
        self.router = nn.Parameter(kaiming_uniform_(torch.empty(num_b, r)))  # (num_b, r), this layer's own

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        z = F.linear(x, self.A)  # (B, T, r)
        p = F.softmax(F.linear(z, self.router), dim=-1)  # (B, T, num_b)
        p = p.reshape(-1, p.shape[-1]).mean(dim=0)  # (num_b,): one mix for the whole batch
        B = torch.einsum("e,erd->rd", p, self.B)  # (r, d_out)
        return self.base(x) + self.scaling * (z @ B)


def apply(model: nn.Module, config: LilyConfig) -> nn.Module:
    freeze_base(model)
    groups: dict[tuple, list] = {}  # (matched target, (d_in, d_out)) -> targets, in model order
    for t in find_targets(model, config.target_modules):
        which = next(p for p in config.target_modules if p in t.roles or matches(t.name, p))
        groups.setdefault((which, linear_dims(t.module)), []).append(t)
    for (_, (d_in, d_out)), targets in groups.items():
        B = nn.Parameter(torch.zeros(config.num_b, config.r, d_out))  # zero experts: no update at init
        for i, t in enumerate(targets):
            if i % config.stride_a == 0:  # the first layer of each stride block brings a new A
                A = nn.Parameter(kaiming_uniform_(torch.empty(config.r, d_in)))
            replace_module(model, t.name, LilyLinear(t.module, A, B, config.scaling))
    return model
