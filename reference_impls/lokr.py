"""LoKr: Low-Rank Kronecker Product (LyCORIS), as peft 0.21 builds it for linear layers.

Equation:   h = W0 x + ΔW x,   ΔW = (alpha / r) · W1 ⊗ W2,
            d_out = a · b,  d_in = c · d,   W1 ∈ R^{a × c},  W2 ∈ R^{b × d}   (so W1 ⊗ W2 ∈ R^{d_out × d_in})
            (a, b) = factorization(d_out, f),  (c, d) = factorization(d_in, f),  f = decompose_factor
            W2 = B2 A2 (B2: b × r, A2: r × d)  when 2r < max(b, d), else a full b × d matrix;
            W1 = B1 A1 (B1: a × r, A1: r × c)  when decompose_both and 2r < max(a, c), else a full a × c matrix.
Trainable:  per targeted module, [r (a + c) if decompose_both and 2r < max(a, c) else a c]
                               + [r (b + d) if 2r < max(b, d) else b d]
            (catalog: trainable_params.per_target, written with if_lt, factor_a and factor_b)
Paper:      "Navigating Text-To-Image Customization: From LyCORIS Fine-Tuning to Model Evaluation",
            Shih-Ying Yeh et al., 2024 (ICLR 2024), arXiv 2309.14859.

The Kronecker product of an a × c and a b × d matrix has rank rank(W1) · rank(W2), so a few thousand
parameters can give a full-rank d_out × d_in update. `factorization` is LyCORIS's: each size is split into the
divisor pair closest to its square root (f = -1), or into (f, size / f) when f divides it
(`peftkb.formula.kronecker_factors`, the same function the catalog formula uses).

Initialisation (peft's `init_weights=True`): W1 (or B1) = 0 and the rest Kaiming-uniform, so ΔW = 0 and the
adapted model starts equal to the base model. Training-time regularisers, both off by default: rank_dropout
zeroes whole output rows of ΔW with probability p (peft's default leaves the kept rows unscaled), and
module_dropout skips the whole update of a module for a step with probability p. The update merges into W0.

Checked against: peft 0.21.2 `peft/tuners/lokr/layer.py` (update_layer's shapes and use_w1/use_w2 rule,
reset_adapter_parameters, get_delta_weight = make_kron(w1, w2) · alpha / r, the two dropouts and their order of
random draws): outputs, gradients, counts and merges agree on tiny Llama, BERT and T5 (test_lokr.py). Only the
linear case: peft's Conv1d/Conv2d branches (and use_effective_conv2d) are left out, so GPT-2's Conv1D, which
peft's LoKr refuses, is not supported here either.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from peftkb.formula import kronecker_factors
from reference_impls._core import AdditiveUpdate, freeze_base, kaiming_uniform_, replace_modules


@dataclass
class LoKrConfig:
    r: int = 8                         # rank of the low-rank forms of W2 (and of W1 with decompose_both)
    alpha: float = 8                   # the update is scaled by alpha / r
    decompose_factor: int = -1         # f of the factorisation; -1: near the square root
    decompose_both: bool = False       # also store W1 as a rank-r product when it is large
    rank_dropout: float = 0.0          # training: drop output rows of ΔW
    module_dropout: float = 0.0        # training: skip the whole update of a module
    target_modules: tuple[str, ...] = ("q", "v")


def _factor(rows: int, cols: int, r: int, low_rank: bool, zero_first: bool) -> nn.ParameterList:
    """A rows × cols matrix: one full factor, or B (rows × r) and A (r × cols). `zero_first`: the first is 0."""
    shapes = [(rows, r), (r, cols)] if low_rank else [(rows, cols)]
    params = [nn.Parameter(kaiming_uniform_(torch.empty(*shape))) for shape in shapes]
    if zero_first:
        nn.init.zeros_(params[0])  # W1 = 0 (or B1 = 0): ΔW = 0 at init
    return nn.ParameterList(params)


def _matrix(factors: nn.ParameterList) -> torch.Tensor:
    return factors[0] if len(factors) == 1 else factors[0] @ factors[1]


class LoKrLinear(AdditiveUpdate):
    def __init__(self, base: nn.Linear, r: int, alpha: float, decompose_factor: int = -1,
                 decompose_both: bool = False, rank_dropout: float = 0.0, module_dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise NotImplementedError(f"LoKr wraps nn.Linear layers (as peft does), not {type(base).__name__}")
        self.base = base
        a, b = kronecker_factors(base.out_features, decompose_factor)  # d_out = a · b
        c, d = kronecker_factors(base.in_features, decompose_factor)   # d_in = c · d
        self.scaling = alpha / r
        self.rank_dropout, self.module_dropout = rank_dropout, module_dropout
        self.w1 = _factor(a, c, r, low_rank=decompose_both and 2 * r < max(a, c), zero_first=True)  # (a, c)
        self.w2 = _factor(b, d, r, low_rank=2 * r < max(b, d), zero_first=False)                     # (b, d)
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * torch.kron(_matrix(self.w1), _matrix(self.w2))  # (a·b, c·d) = (d_out, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)  # (B, T, d_out)
        if self.merged or (self.training and torch.rand(()) < self.module_dropout):
            return h
        delta = self.delta_weight()
        if self.training and self.rank_dropout > 0:
            keep = (torch.rand(delta.shape[0], device=delta.device) > self.rank_dropout).to(delta.dtype)  # (d_out,)
            delta = delta * keep[:, None]
        return h + F.linear(x, delta)


def apply(model: nn.Module, config: LoKrConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules, lambda t: LoKrLinear(
        t.module, config.r, config.alpha, config.decompose_factor, config.decompose_both, config.rank_dropout,
        config.module_dropout))
    return model
