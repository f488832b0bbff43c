"""KronA: Kronecker Adapter, a frozen linear layer plus a Kronecker-product update.

Equation:   h = W0 x + s * (A ⊗ B) x,   A ∈ R^{a_out × a_in},  B ∈ R^{(d_out / a_out) × (d_in / a_in)},  W0 frozen
            computed without forming A ⊗ B:  (A ⊗ B) x = vec(A X Bᵀ),  X = x reshaped to (a_in, d_in / a_in)
            (row-major vec, the layout torch.kron uses)
Trainable:  a_out * a_in + (d_out / a_out) * (d_in / a_in) per targeted module   (catalog: per_target)
Paper:      "KronA: Parameter Efficient Tuning with Kronecker Adapter", Ali Edalati et al., 2022,
            arXiv 2212.10650.

This is the mergeable KronA (parallel to W_q and W_v, like LoRA): after training s (A ⊗ B) is added into
W0. The paper's KronA^B / KronA^B_res variants (beside the FFN block, with a residual scale) are not
mergeable and not implemented here. A ⊗ B can have rank up to rank(A) * rank(B), so the update is not
low-rank like LoRA's for the same parameter count.

Init: A ~ Kaiming-uniform, B = 0 (LoRA's convention), so A ⊗ B = 0 and the model starts equal to the base
model; the paper's exact initialisation was not checked.

Checked against: peft 0.21.2 `peft/tuners/lokr/layer.py` with full (non-decomposed) Kronecker factors,
which is this update W0 + s (A ⊗ B) (the oracle test matches its outputs and counts); the paper's
abstract (Kronecker product in place of LoRA's low-rank product, mergeable). The paper's method section
(factor shapes, initialisation, scale, the KronA^B variants) was not re-read in this pass and no authors'
code was consulted. Numeric pins: test_krona.py checks the vec-trick forward against s · torch.kron(A, B)
x, the count a_out a_in + (d_out/a_out)(d_in/a_in), and a full-rank update LoRA cannot reach.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._core import AdditiveUpdate, freeze_base, kaiming_uniform_, linear_dims, replace_modules


@dataclass
class KronAConfig:
    a_out: int = 32                               # rows of A; B has d_out / a_out rows
    a_in: int = 32                                # columns of A; B has d_in / a_in columns
    scale: float = 1.0                            # s, the scale of the Kronecker update
    target_modules: tuple[str, ...] = ("q", "v")  # roles or module-name suffixes (LoRA's placement)


class KronALinear(AdditiveUpdate):
    def __init__(self, base: nn.Module, a_out: int, a_in: int, scale: float) -> None:
        super().__init__()
        d_in, d_out = linear_dims(base)
        if d_out % a_out or d_in % a_in:
            raise ValueError(f"KronA needs a_out | d_out and a_in | d_in; got a_out={a_out}, d_out={d_out}, "
                             f"a_in={a_in}, d_in={d_in}")
        self.base = base
        self.scale = scale
        self.A = nn.Parameter(kaiming_uniform_(torch.empty(a_out, a_in)))  # (a_out, a_in)
        # zero init: A ⊗ 0 = 0, so the wrapped layer starts identical to the base layer
        self.B = nn.Parameter(torch.zeros(d_out // a_out, d_in // a_in))  # (p, q) = (d_out/a_out, d_in/a_in)
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        return self.scale * torch.kron(self.A, self.B)  # (d_out, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)  # (B, T, d_out)
        if self.merged:
            return h
        X = x.reshape(*x.shape[:-1], self.A.shape[1], self.B.shape[1])  # (B, T, a_in, q)
        Y = self.A @ X @ self.B.T  # (B, T, a_out, p): the vec trick, never forming the d_out x d_in matrix
        return h + self.scale * Y.reshape(h.shape)  # (B, T, d_out)


def apply(model: nn.Module, config: KronAConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules,
                    lambda t: KronALinear(t.module, config.a_out, config.a_in, config.scale))
    return model
