"""Compacter++: one Compacter (PHM bottleneck) adapter per block, after the feed-forward sublayer.

Equation:   the Pfeiffer placement of pfeiffer_adapter.py (pre-LN: out = y + A(y); BERT: out = LN(y + A(LN(y))),
            y = x + h the FFN sublayer's output after its residual), with A(z) = U f(D z) where the down- and
            up-projections D: R^d -> R^k and U: R^k -> R^d (k = d_model // reduction_factor) are PHM layers
            y = W x + b,   W = Σ_{i=1..n} A_i ⊗ B_i,   B_i = s_i t_i,
            s_i ∈ R^{d_out/n × rank},  t_i ∈ R^{rank × d_in/n}
            with the n "slow" matrices A_i ∈ R^{n × n} shared by every PHM layer of the model and the "fast"
            factors s_i, t_i owned by the layer (rank = phm_rank; the paper's Compacter has rank 1), n = phm_dim.
Trainable:  total  phm_dim * phm_dim * phm_dim,
            per layer  phm_rank * 2 * (d_model + d_model // reduction_factor) + d_model // reduction_factor + d_model
Paper:      "Compacter: Efficient Low-Rank Hypercomplex Adapter Layers", Rabeeh Karimi Mahabadi, James Henderson,
            Sebastian Ruder, 2021 (NeurIPS 2021), arXiv 2106.04647 (Compacter++ keeps only the adapter after
            the feed-forward layer).

Checked against: AdapterHub adapters 1.3.0 (source commit 88f18eb: CompacterPlusPlusConfig = SeqBnConfig with
phm_layer=True, reduction_factor=32, gelu; methods/modeling.py PHMLayer with shared_phm_rule=True,
factorized_phm_W=True, phm_bias=True): the count above, and the outputs of `adapters` 1.3.0 (transformers
4.57) on tiny BERT and LLaMA (phm_rank 2) with random PHM weights copied across: AdapterHub computes
y = x H + b with H = Σ_i phm_rule_i ⊗ (W_left_i W_right_i) of shape (d_in, d_out), so A_i = phm_ruleᵢᵀ,
s_i = W_right_iᵀ, t_i = W_left_iᵀ here; max |Δlogits| ≤ 4.1e-6 against changes of ~3 from the base model, and
the same trainable count (464). A one-off check: `adapters` is not a test dependency.
Deviations: AdapterHub draws the factors Xavier-normal and A from N(0, 1e-4²); here the up-projection's s starts
at zero (so W_up = 0, b_up = 0 and the model starts as the base model) and the other factors are scaled as in
compacter.py. The paper also trains the layer norms, which stay frozen here (the catalog count leaves them out).
Not mergeable: f sits between the two projections.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._core import freeze_base
from reference_impls.compacter import PHMRule
from reference_impls.pfeiffer_adapter import attach
from reference_impls.sequential_adapter import ACTIVATIONS


@dataclass
class CompacterPlusPlusConfig:
    reduction_factor: int = 32  # bottleneck k = d_model // reduction_factor (AdapterHub CompacterPlusPlusConfig)
    phm_dim: int = 4            # n: Kronecker summands and size of the shared A_i
    phm_rank: int = 1           # rank of each fast matrix B_i = s_i t_i
    activation: str = "gelu"    # f between the projections


class PHMLinear(nn.Module):
    """y = W x + b with W = Σ_i A_i ⊗ (s_i t_i); A comes from the model's shared PHMRule."""

    def __init__(self, d_in: int, d_out: int, rule: PHMRule, rank: int, zero_init: bool = False) -> None:
        super().__init__()
        n = rule.A.shape[0]
        if d_in % n or d_out % n:
            raise ValueError(f"phm_dim {n} must divide both sizes of the projection ({d_in} -> {d_out})")
        self._rule = (rule,)  # a tuple, so the shared module is registered once (on the model), not here
        self.d_in, self.d_out = d_in, d_out
        # s = 0 for the up-projection: every B_i = 0, so W = 0 and the adapter starts as the identity
        s = torch.zeros(n, d_out // n, rank) if zero_init else torch.randn(n, d_out // n, rank) / math.sqrt(rank)
        self.s = nn.Parameter(s)                                                    # (n, d_out/n, rank)
        self.t = nn.Parameter(torch.randn(n, rank, d_in // n) / math.sqrt(d_in))    # (n, rank, d_in/n)
        self.b = nn.Parameter(torch.zeros(d_out))                                   # (d_out,)

    def weight(self) -> torch.Tensor:
        A = self._rule[0].A  # (n, n, n)
        B = self.s @ self.t  # (n, d_out/n, d_in/n): B_i = s_i t_i, rank <= phm_rank
        # (A_i ⊗ B_i)[a·p + c, b·q + e] = A_i[a, b] B_i[c, e], summed over i
        W = torch.einsum("iab,ice->acbe", A, B)  # (n, d_out/n, n, d_in/n)
        return W.reshape(self.d_out, self.d_in)  # (d_out, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        return nn.functional.linear(x, self.weight(), self.b)  # (B, T, d_out)


class CompacterBottleneck(nn.Module):
    """A(z) = U f(D z): the adapter's residual branch, both projections PHM layers (the residual is added by
    the placement in pfeiffer_adapter.attach)."""

    def __init__(self, d: int, k: int, rule: PHMRule, rank: int, activation: str) -> None:
        super().__init__()
        self.down = PHMLinear(d, k, rule, rank)                  # D: (k, d)
        self.f = ACTIVATIONS[activation]()
        self.up = PHMLinear(k, d, rule, rank, zero_init=True)    # U: (d, k), zero at init

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # z: (B, T, d)
        return self.up(self.f(self.down(z)))  # (B, T, k) -> (B, T, d)


def apply(model: nn.Module, config: CompacterPlusPlusConfig) -> nn.Module:
    freeze_base(model)
    model.phm_rule = PHMRule(config.phm_dim)  # the shared A_i, one set for every PHM layer
    attach(model, lambda d: CompacterBottleneck(d, d // config.reduction_factor, model.phm_rule, config.phm_rank,
                                                config.activation))
    return model
