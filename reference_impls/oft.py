"""OFT: Orthogonal Finetuning (in the OFTv2 form peft implements).

Equation:   W = W0 Rᵀ, i.e. every neuron's weight vector (a row w_i of W0) becomes R w_i;  h = W0 (Rᵀ x) + b
            R = diag(R_1, ..., R_{d_in / b}),  R_j = Cayley(Q_j) ∈ R^{b × b},  Q_j = −Q_jᵀ (skew-symmetric)
            Cayley(Q) = (I + Q)(I − Q)^{-1} ≈ I + 2Q + 2Q² + … + 2Q^{m−1} + Q^m   (truncated Neumann series)
Trainable:  d_in * (block_size - 1) / 2 per targeted module   (catalog: trainable_params.per_target)
Paper:      "Controlling Text-to-Image Diffusion by Orthogonal Finetuning", Zeju Qiu et al., 2023 (NeurIPS 2023),
            arXiv 2306.07280; OFTv2: "Orthogonal Finetuning Made Scalable", Zeju Qiu et al., 2025, arXiv 2506.19847.

Each block Q_j is stored as the b(b − 1)/2 entries above its diagonal. A rotation keeps the angles between
neurons (the paper's hyperspherical energy); R is block-diagonal so that it costs d_in (b − 1)/2 parameters
instead of d_in (d_in − 1)/2. Following OFTv2 and peft, the layer rotates its *input* (x ↦ Rᵀ x, a matrix-
vector product per block) instead of forming W0 Rᵀ, and Cayley's inverse is replaced by the truncated
Neumann series, which is orthogonal only up to the truncation (m = max(n − 1, 3) for n =
num_cayley_neumann_terms > 2, peft's loop; n = 2 gives I + 2Q, n = 1 gives I). With use_cayley_neumann=False
R is computed exactly, as peft does, as (I − Q)(I + Q)^{-1}: the transpose of the series' limit, equally
orthogonal.

Initialisation: Q = 0, so R = I and the adapted model starts equal to the base model (the paper starts R
at the identity). The rotation merges into the weight: W = W0 Rᵀ (unmerge multiplies by
(Rᵀ)^{-1}, since the series' R is not exactly orthogonal).

Options as in peft: block_share (one Q for every block of a module), coft (before each use, Q is pulled
back into the ball ||Q_j||_F ≤ eps / sqrt(d_in / b), peft's projection of COFT's constraint), module_dropout
(during training each block is replaced by the identity with probability p; peft 0.21.2's Linear.forward
builds this layer but does not call it). Deviation: a block size or r that does not divide d_in is refused
(peft shrinks it with a warning), and giving both is refused, as in peft.

Checked against: the paper's method section (rotation of the neurons by an orthogonal R, block-diagonal R,
Cayley parameterisation, identity init, COFT's bound); the OFTv2 paper (input-centric rotation, Cayley-Neumann);
peft 0.21.2 `peft/tuners/oft/layer.py` (OFTRotationModule._cayley_batch, _project_batch, forward; Linear.merge
W ← (R Wᵀ)ᵀ); the oracle tests compare outputs, gradients and merged weights with peft's OFTModel.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._core import Wrapper, freeze_base, linear_dims, linear_weight, replace_modules


@dataclass
class OFTConfig:
    block_size: int = 32                          # size b of each orthogonal block (0: derive it from r)
    r: int = 0                                    # number of blocks per module (0: derive it from block_size)
    use_cayley_neumann: bool = True               # Neumann series instead of the exact Cayley inverse
    num_cayley_neumann_terms: int = 5             # terms of the series
    coft: bool = False                            # constrained OFT: keep every Q_j within eps of 0
    eps: float = 6e-5                             # radius of the COFT constraint
    block_share: bool = False                     # one Q shared by all blocks of a module
    module_dropout: float = 0.0                   # probability of replacing a block by I while training
    target_modules: tuple[str, ...] = ("q", "v")  # roles or module-name suffixes


def skew(vec: torch.Tensor, b: int) -> torch.Tensor:
    """(n, b(b-1)/2) upper-triangle entries -> (n, b, b) skew-symmetric matrices."""
    rows, cols = torch.triu_indices(b, b, 1, device=vec.device)
    Q = vec.new_zeros(vec.shape[0], b, b)
    Q[:, rows, cols] = vec
    return Q - Q.transpose(-2, -1)


def cayley(Q: torch.Tensor, neumann: bool, n_terms: int) -> torch.Tensor:
    """Orthogonal (n, b, b) blocks from skew-symmetric (n, b, b) Q, as peft computes them."""
    I = torch.eye(Q.shape[-1], dtype=Q.dtype, device=Q.device).expand_as(Q)  # noqa: E741
    if not neumann:
        return torch.linalg.solve(I + Q, I - Q, left=False)  # X (I + Q) = I − Q: X = (I − Q)(I + Q)^{-1}
    R = I.clone()
    if n_terms > 1:
        R = R + 2 * Q
    if n_terms > 2:
        power = Q @ Q
        R = R + 2 * power
        for _ in range(3, n_terms - 1):
            power = power @ Q
            R = R + 2 * power
        R = R + power @ Q  # the last term counts once
    return R


class OFTLinear(Wrapper):
    def __init__(self, base: nn.Module, name: str, config: OFTConfig) -> None:
        super().__init__()
        d_in, _ = linear_dims(base)
        if (config.r == 0) == (config.block_size == 0):
            raise ValueError(f"OFT: give block_size or r, not both (block_size={config.block_size}, r={config.r})")
        b = config.block_size or d_in // max(config.r, 1)
        if b < 1 or d_in % b:
            raise ValueError(f"OFT: the block size {b} does not divide d_in = {d_in} of {name}")
        self.base, self.b, self.n = base, b, d_in // b
        self.config = config
        # zero init: Q = 0 gives R = I, so the wrapped layer starts identical to the base layer
        self.Q = nn.Parameter(torch.zeros(1 if config.block_share else self.n, b * (b - 1) // 2))  # (n or 1, b(b-1)/2)
        self.merged = False

    def blocks(self) -> torch.Tensor:
        """The n orthogonal blocks R_j: (n, b, b)."""
        c = self.config
        if c.coft:
            with torch.no_grad():  # peft's projection, applied to the parameter itself before each use
                self.Q.copy_(self._project(self.Q))
        R = cayley(skew(self.Q, self.b), c.use_cayley_neumann, c.num_cayley_neumann_terms)
        R = R.expand(self.n, -1, -1) if c.block_share else R
        if self.training and c.module_dropout > 0 and self.n > 1:
            keep = torch.ones(self.n, device=R.device)
            keep[torch.randperm(self.n)[: int(c.module_dropout * self.n)]] = 0  # these blocks become I
            I = torch.eye(self.b, device=R.device, dtype=R.dtype)  # noqa: E741
            R = keep[:, None, None] * R + (1 - keep[:, None, None]) * I
        return R

    def _project(self, vec: torch.Tensor) -> torch.Tensor:
        """Pull every block's skew matrix back into the Frobenius ball of radius eps / sqrt(n_blocks)."""
        Q = skew(vec, self.b)  # (k, b, b)
        eps = self.config.eps / Q.shape[0] ** 0.5
        norm = Q.norm(dim=(1, 2), keepdim=True)
        Q = torch.where(norm <= eps, Q, eps * Q / norm)
        rows, cols = torch.triu_indices(self.b, self.b, 1, device=vec.device)
        return Q[:, rows, cols]

    def rotation(self) -> torch.Tensor:
        return torch.block_diag(*self.blocks())  # (d_in, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        if self.merged:
            return self.base(x)
        xb = x.reshape(*x.shape[:-1], self.n, self.b)                # (B, T, n, b)
        xb = torch.einsum("...jk,jkc->...jc", xb, self.blocks())     # each block: row vector x_j R_j = (R_jᵀ x_j)ᵀ
        return self.base(xb.reshape(x.shape))                        # W0 Rᵀ x: (B, T, d_out)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            W = linear_weight(self.base)  # (d_out, d_in) view
            W.copy_(W @ self.rotation().T)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            W = linear_weight(self.base)
            W.copy_(W @ torch.linalg.inv(self.rotation().T))
            self.merged = False


def apply(model: nn.Module, config: OFTConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules, lambda t: OFTLinear(t.module, t.name, config))
    return model
