"""BOFT: Butterfly Orthogonal Fine-Tuning.

Equation:   h = s ⊙ (W0 Mᵀ x) + b,   M = F_m ⋯ F_2 F_1,   F_i = P_i diag(Q_i1, ..., Q_iD) P_iᵀ,
            Q = (I − S)(I + S)⁻¹ with S = (R − Rᵀ) / 2   (Cayley transform: Q is orthogonal)
            R_ij ∈ R^{b × b} trainable, P_i fixed butterfly permutations (P_1 = I), s ∈ R^{d_out} trainable
Trainable:  n_butterfly_factor * block_size * d_in + d_out per targeted module   (catalog: per_target; m factors
            of D = d_in / b blocks of b × b, plus the output scale s)
Paper:      "Parameter-Efficient Orthogonal Finetuning via Butterfly Factorization", Weiyang Liu et al., 2024
            (ICLR 2024), arXiv 2311.06243.

Orthogonal fine-tuning rotates the input space of a frozen weight, which keeps the angles between its rows
(the paper's hyperspherical energy). One block-diagonal rotation (m = 1, plain OFT) only mixes features
inside a block; BOFT multiplies m block-diagonal rotations whose blocks are interleaved by butterfly
permutations, so that up to log2(D) + 1 factors connect every input feature with every other (a dense
orthogonal matrix) with few parameters. Factor i
(counting from 0) permutes within groups of 2^i b features, moving the first halves of every other b/2-wide
chunk together, as in the butterfly graph of the FFT.

R = 0 and s = 1 at init, so M = I and the model starts unchanged. Multiplicative dropout (training only)
replaces ⌊p D⌋ randomly chosen blocks of one randomly chosen factor by the identity. Merging writes
diag(s) W0 Mᵀ into the base weight (M⁻¹ = Mᵀ undoes it).

Checked against: the paper (the butterfly factorisation of the orthogonal matrix, the Cayley
parameterisation); peft 0.21.2 `peft/tuners/boft/layer.py` (block_butterfly_perm, cayley_batch, the rotation
applied as x @ M, the scale on the output without the bias, MultiplicativeDropoutLayer). Without its CUDA
extension peft silently uses one factor; this file builds m factors on any device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._core import Wrapper, freeze_base, linear_dims, linear_weight, replace_modules


@dataclass
class BOFTConfig:
    block_size: int = 4             # b, the size of each orthogonal block (give block_size or block_num)
    block_num: int = 0              # D, blocks per factor; 0: d_in / block_size
    n_butterfly_factor: int = 1     # m, the number of butterfly factors (1 is block-diagonal OFT)
    dropout: float = 0.0            # multiplicative dropout: blocks set to the identity during training
    target_modules: tuple[str, ...] = ("q", "v")


def butterfly_permutation(d: int, group: int, chunk: int) -> torch.Tensor:
    """Index form of one butterfly permutation P (P[j, p[j]] = 1): inside every group of `group` features,
    the `chunk`-wide pieces are reordered as all even-numbered pieces, then all odd-numbered ones."""
    pieces = torch.arange(group).view(group // chunk, chunk)          # (pieces, chunk)
    order = torch.cat([pieces[0::2], pieces[1::2]]).flatten()         # (group,)
    return torch.cat([start + order for start in range(0, d, group)])  # (d,)


def cayley(R: torch.Tensor) -> torch.Tensor:
    """(I − S)(I + S)⁻¹ for S the skew-symmetric part of each (b, b) matrix in R (..., b, b)."""
    S = 0.5 * (R - R.transpose(-1, -2))
    eye = torch.eye(R.shape[-1], dtype=R.dtype, device=R.device).expand_as(S)
    return torch.linalg.solve(eye + S, eye - S, left=False)  # Q (I + S) = I − S


class BOFTLinear(Wrapper):
    def __init__(self, base: nn.Module, block_size: int, block_num: int, n_butterfly_factor: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        d_in, d_out = linear_dims(base)
        if (block_size == 0) == (block_num == 0):
            raise ValueError("give exactly one of block_size and block_num (the other 0)")
        b = block_size or d_in // block_num
        m = n_butterfly_factor
        if m < 1 or d_in % b or (m > 1 and (b % 2 or d_in % (b * 2 ** (m - 1)))):
            raise ValueError(f"block_size {b} with {m} butterfly factors does not tile d_in = {d_in} "
                             f"(d_in must be a multiple of block_size * 2^(m-1), block_size even when m > 1)")
        self.base, self.b, self.D, self.p = base, b, d_in // b, dropout
        # factor i permutes within groups of 2^i b features in b/2-wide pieces; factor 0 is the identity
        perms = [torch.arange(d_in)] + [butterfly_permutation(d_in, b * 2 ** i, b // 2) for i in range(1, m)]
        self.register_buffer("perms", torch.stack(perms), persistent=False)  # (m, d_in)
        self.R = nn.Parameter(torch.zeros(m, self.D, b, b))  # R = 0: every block is I
        self.s = nn.Parameter(torch.ones(d_out))             # (d_out,)
        self.merged = False

    def blocks(self) -> torch.Tensor:  # (m, D, b, b) orthogonal blocks
        Q = cayley(self.R)
        if self.training and self.p > 0:  # multiplicative dropout: some blocks of one factor become I
            n_drop = int(self.p * self.D)
            mask = torch.zeros(Q.shape[:2] + (1, 1), dtype=Q.dtype, device=Q.device)  # (m, D, 1, 1)
            mask[torch.randint(0, Q.shape[0], ()), torch.randperm(self.D)[:n_drop]] = 1
            Q = (1 - mask) * Q + mask * torch.eye(self.b, dtype=Q.dtype, device=Q.device)
        return Q

    def rotation(self) -> torch.Tensor:
        """M = F_m ⋯ F_1, F_i = P_i blockdiag(Q_i) P_iᵀ: (d_in, d_in), orthogonal."""
        eye = torch.eye(self.perms.shape[1], dtype=self.R.dtype, device=self.R.device)
        M = eye
        for perm, Q in zip(self.perms, self.blocks()):
            P = eye[perm]  # (d_in, d_in), P[j, perm[j]] = 1
            M = P @ torch.block_diag(*Q) @ P.T @ M
        return M

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        if self.merged:
            return self.base(x)
        h = self.base(x @ self.rotation())  # row form of W0 (Mᵀ x) + b: (B, T, d_out)
        bias = getattr(self.base, "bias", None)
        return h * self.s if bias is None else (h - bias) * self.s + bias  # the scale leaves the bias alone

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            W = linear_weight(self.base)
            W.copy_(self.s[:, None] * (W @ self.rotation().T))  # diag(s) W0 Mᵀ
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            W = linear_weight(self.base)
            W.copy_((W / self.s[:, None]) @ self.rotation())  # M orthogonal: Mᵀ M = I
            self.merged = False


def apply(model: nn.Module, config: BOFTConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules, lambda t: BOFTLinear(
        t.module, config.block_size, config.block_num, config.n_butterfly_factor, config.dropout))
    return model
