"""Compacter: bottleneck adapters whose projections are low-rank parameterised hypercomplex (PHM) layers.

Equation:   adapter(h) = h + U(f(D(h))),   D: R^d -> R^k,  U: R^k -> R^d,  k = d_model // reduction_factor
            every projection is a PHM layer  y = W x + b  with
            W = Σ_{i=1..n} A_i ⊗ B_i,   A_i ∈ R^{n × n} shared by all adapter layers ("slow" weights),
            B_i = s_i t_iᵀ,  s_i ∈ R^{d_out/n},  t_i ∈ R^{d_in/n}  owned by the layer ("fast" weights, rank 1)
            n = phm_dim; one adapter after the attention sublayer and one after the FFN (Houlsby placement).
Trainable:  n^3 shared, plus per block 2 adapters × (2 projections × (k + d) factor entries + k + d biases):
            total  phm_dim * phm_dim * phm_dim,  per_layer  6 * (d_model // reduction_factor + d_model)
            (the paper's headline n^3 + 4L(k + d) leaves out the k + d biases of each adapter)
Paper:      "Compacter: Efficient Low-Rank Hypercomplex Adapter Layers", Rabeeh Karimi Mahabadi, James
            Henderson, Sebastian Ruder, 2021 (NeurIPS 2021), arXiv 2106.04647.

Deviations: the paper also trains the layer norms (left frozen here, as in sequential_adapter.py and the
catalog count). Initialisation: the paper's code draws A, s, t from small random inits; here the
up-projections' s_i start at zero, so B_i = 0, W_up = 0 and (with b_up = 0) each adapter starts as the
identity and the model as the base model; the other factors are scaled so that W has nn.Linear-like
variance 1/d_in. Not mergeable: f sits between the two projections.

Checked against: the adapters library github.com/adapter-hub/adapters @88f18ebd (configuration/
adapter_config.py CompacterConfig: Houlsby placement (DoubleSeqBnConfig), phm_layer, reduction_factor 32,
gelu; BnConfig's PHM defaults phm_dim 4, shared_phm_rule True, factorized_phm_W True, phm_rank 1;
methods/modeling.py: one phm_rule per adapter, taken from the shared parameters by every layer's down
and up projection). The paper's text was not re-read in this pass beyond the equation above (its
W = Σ A_i ⊗ B_i with B_i = s_i t_iᵀ and shared A_i). peft has no Compacter. Numeric pins:
test_compacter.py rebuilds W = Σ_i A_i ⊗ (s_i t_iᵀ) by hand and checks n³ + per-block counts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._core import Wrapper, freeze_base, linear_dims, replace_modules
from reference_impls.sequential_adapter import ACTIVATIONS


@dataclass
class CompacterConfig:
    phm_dim: int = 4                               # n: Kronecker summands and size of the shared A_i
    reduction_factor: int = 32                     # bottleneck k = d_model // reduction_factor
    activation: str = "gelu"                       # f between the projections (AdapterHub's Compacter default)
    target_modules: tuple[str, ...] = ("o", "down")  # an adapter follows each (attention out, FFN out)


class PHMRule(nn.Module):
    """The n shared "slow" matrices A_i, held once by the model."""

    def __init__(self, n: int) -> None:
        super().__init__()
        # std 1/sqrt(n): Σ_i over n Kronecker terms then keeps W's variance at var(s) * var(t)
        self.A = nn.Parameter(torch.randn(n, n, n) / math.sqrt(n))  # (n, n, n): A_i = A[i]


class PHMLinear(nn.Module):
    """y = W x + b with W = Σ_i A_i ⊗ (s_i t_iᵀ); A comes from the shared PHMRule."""

    def __init__(self, d_in: int, d_out: int, rule: PHMRule, zero_init: bool = False) -> None:
        super().__init__()
        n = rule.A.shape[0]
        if d_in % n or d_out % n:
            raise ValueError(f"phm_dim {n} must divide both sizes of the projection ({d_in} -> {d_out})")
        self._rule = (rule,)  # a tuple, so the shared module is registered once (on the model), not here
        self.d_in, self.d_out = d_in, d_out
        # s = 0 for the up-projection: B_i = 0, so W = 0 and the adapter starts as the identity
        self.s = nn.Parameter(torch.zeros(n, d_out // n) if zero_init else torch.randn(n, d_out // n))  # (n, d_out/n)
        self.t = nn.Parameter(torch.randn(n, d_in // n) / math.sqrt(d_in))  # (n, d_in/n); var(W) ≈ 1/d_in
        self.b = nn.Parameter(torch.zeros(d_out))  # (d_out,)

    def weight(self) -> torch.Tensor:
        A = self._rule[0].A  # (n, n, n)
        n = A.shape[0]
        B = self.s[:, :, None] * self.t[:, None, :]  # (n, d_out/n, d_in/n): B_i = s_i t_iᵀ, rank 1
        # (A_i ⊗ B_i)[a·p + c, b·q + e] = A_i[a, b] B_i[c, e], summed over i
        W = torch.einsum("iab,ice->acbe", A, B)  # (n, d_out/n, n, d_in/n)
        return W.reshape(self.d_out, self.d_in)  # (d_out, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        return nn.functional.linear(x, self.weight(), self.b)  # (B, T, d_out)


class CompacterAdapter(Wrapper):
    """A sublayer's output projection followed by a Compacter: h = base(x); h + U f(D h)."""

    def __init__(self, base: nn.Module, k: int, rule: PHMRule, activation: str) -> None:
        super().__init__()
        self.base = base
        d = linear_dims(base)[1]
        self.down = PHMLinear(d, k, rule)                  # D: (k, d) as a PHM layer
        self.f = ACTIVATIONS[activation]()
        self.up = PHMLinear(k, d, rule, zero_init=True)    # U: (d, k), zero at init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)  # (B, T, d)
        return h + self.up(self.f(self.down(h)))  # (B, T, k) -> (B, T, d)


def apply(model: nn.Module, config: CompacterConfig) -> nn.Module:
    freeze_base(model)
    model.phm_rule = PHMRule(config.phm_dim)  # the shared A_i, one set for every adapter layer
    replace_modules(model, config.target_modules,
                    lambda t: CompacterAdapter(t.module, linear_dims(t.module)[1] // config.reduction_factor,
                                               model.phm_rule, config.activation))
    return model
