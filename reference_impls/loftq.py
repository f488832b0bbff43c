"""LoftQ: LoRA-Fine-Tuning-aware Quantization (quantize W and initialise LoRA's factors together).

Equation:   minimise ||W - Q - s B A||_F over Q (an N-bit NormalFloat matrix) and rank-r B A, by alternating
                Q_t     = q_N(W - s B_{t-1} A_{t-1})                  (quantize what the adapter misses)
                B_t A_t = SVD_r(W - Q_t) / s                          (best rank-r fit of what Q misses)
            from B_0 A_0 = 0, for t = 1..n_iter; then fine-tune like QLoRA:
                h = Q x + s B A x,   s = alpha / r,   A ∈ R^{r × d_in},  B ∈ R^{d_out × r},  Q frozen
            SVD_r(R) = U_r Σ_r V_rᵀ is split evenly:  B = U_r Σ_r^{1/2} / √s,  A = Σ_r^{1/2} V_rᵀ / √s
Trainable:  r * (d_in + d_out) per targeted module        (catalog: trainable_params.per_target)
Paper:      "LoftQ: LoRA-Fine-Tuning-aware Quantization for Large Language Models", Yixiao Li et al., 2023
            (ICLR 2024), arXiv 2310.08659.

q_N is block-wise absmax NormalFloat quantization with 2^N levels (NF4 for N = 4, the levels of
QLoRA's NF4 table; NF2 etc. from the same normal-quantile construction), as the authors' code and peft's
former pure-torch NFQuantizer do, with no double quantization of the constants (peft calls bitsandbytes
with compress_statistics=False). With n_iter = 1, Q is exactly QLoRA's quantization of W, and LoftQ's
init improves on QLoRA's B = 0 by the best rank-r fit of the quantization error.

Checked against: peft 0.21.2's `peft/utils/loftq_utils.py` (read at commit 5d602fd): `loftq_init` alternates
res = W - dequant(quant(res)) and the rank-r SVD of res for num_iter rounds, starting from res = W, with
bitsandbytes NF4 (`compress_statistics=False`), and `_low_rank_decomposition` splits Σ evenly
(L = U √Σ_r, R = √Σ_r Vᵀ; lora_A = R, lora_B = L). test_loftq.py pins that SVD step against peft's function,
the first quantization against QLoRA's NF4, the division by s, and the error falling over the iterations.
peft's quantizer itself needs bitsandbytes and a GPU and was not run; the paper's algorithm (its §3) was
not re-read in this pass.

Deviation: peft (and the authors' code) put SVD_r(W - Q) into B A without dividing by s, which is right
only when alpha = r (the LoftQ defaults); dividing by s keeps Q + s B A ≈ W for any alpha. The model does
not start equal to the full-precision model (only approximately: that is the point); it starts equal to
Q + s B A. Codes are stored one per uint8. Not mergeable without leaving the quantized format, as QLoRA.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._core import QuantizedLinear, Target, find_targets, freeze_base, linear_weight, replace_modules
from reference_impls.lora import LoRALinear
from reference_impls.qlora import NF4_LEVELS, _blocks


@dataclass
class LoftQConfig:
    r: int = 16                  # LoRA rank
    alpha: float = 16            # the update is scaled by alpha / r
    bits: int = 4                # N: NormalFloat bit width of the quantized base (2^N levels)
    n_iter: int = 1              # T: alternating quantize / SVD steps
    block_size: int = 64         # weights per absmax block of the quantizer
    target_modules: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")  # every linear layer of the blocks


def nf_levels(bits: int, offset: float = 0.9677083) -> torch.Tensor:
    """2^bits NormalFloat levels in [-1, 1] with an exact 0 (QLoRA's construction; NF4 for bits = 4)."""
    if bits == 4:
        return NF4_LEVELS
    n = 2 ** bits
    ndtri = torch.special.ndtri
    positive = ndtri(torch.linspace(offset, 0.5, n // 2 + 1, dtype=torch.float64)[:-1])  # n/2 values
    negative = -ndtri(torch.linspace(offset, 0.5, n // 2, dtype=torch.float64)[:-1])     # n/2 - 1 values
    levels = torch.cat([positive, torch.zeros(1, dtype=torch.float64), negative]).sort().values
    return (levels / levels.abs().max()).float()


def quantize_nf(W: torch.Tensor, bits: int, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes (n_blocks, block_size) uint8, absmax (n_blocks,)) of the flattened (d_out, d_in) weight."""
    levels = nf_levels(bits).to(W.device)
    w = _blocks(W.float(), block_size)                        # (n, block_size)
    c = w.abs().amax(dim=1).clamp_min(1e-12)                  # (n,)
    codes = ((w / c[:, None])[..., None] - levels).abs().argmin(-1)  # (n, block_size), nearest level
    return codes.to(torch.uint8), c


def dequantize_nf(codes: torch.Tensor, c: torch.Tensor, bits: int, shape: tuple[int, int]) -> torch.Tensor:
    w = nf_levels(bits).to(c.device)[codes.long()] * c[:, None]  # (n, block_size)
    return w.flatten()[: shape[0] * shape[1]].view(shape)        # (d_out, d_in)


def low_rank(R: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SVD_r(R) = B A with the singular values split evenly: B (d_out, r), A (r, d_in)."""
    U, S, Vh = torch.linalg.svd(R, full_matrices=False)  # U (d_out, k), S (k,), Vh (k, d_in)
    root = S[:r].sqrt()
    return U[:, :r] * root, root[:, None] * Vh[:r]


@torch.no_grad()
def loftq_init(W: torch.Tensor, r: int, bits: int, n_iter: int, block_size: int, scaling: float = 1.0
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The alternating minimisation: (codes, absmax, A, B) with dequant(codes) + scaling * B A ≈ W."""
    if n_iter < 1:
        raise ValueError("n_iter must be at least 1")
    W = W.float()  # (d_out, d_in)
    BA = torch.zeros_like(W)  # s B_0 A_0 = 0: the first Q is plain quantization of W (QLoRA's)
    for _ in range(n_iter):
        codes, c = quantize_nf(W - BA, bits, block_size)           # Q_t = q_N(W - s B A)
        Q = dequantize_nf(codes, c, bits, W.shape)                  # (d_out, d_in)
        B, A = low_rank(W - Q, r)                                   # s B_t A_t = SVD_r(W - Q_t)
        BA = B @ A
    root_s = scaling ** 0.5  # the layer computes s B A, so each factor carries 1/√s
    return codes, c, A / root_s, B / root_s


class NFLinear(QuantizedLinear):
    """A frozen linear layer whose weight is stored as N-bit NormalFloat codes with per-block absmax."""

    def __init__(self, base: nn.Module, codes: torch.Tensor, absmax: torch.Tensor, bits: int) -> None:
        super().__init__(base)
        self.bits = bits
        self.register_buffer("codes", codes)    # (n_blocks, block_size) uint8
        self.register_buffer("absmax", absmax)  # (n_blocks,) float32

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        shape = (self.out_features, self.in_features)
        return dequantize_nf(self.codes, self.absmax, self.bits, shape).to(dtype)  # (d_out, d_in)



class LoftQLinear(LoRALinear):
    def merge(self) -> None:
        raise NotImplementedError("merging into the NormalFloat weights would need dequantizing them")

    unmerge = merge


def _init(t: Target, config: LoftQConfig) -> tuple[NFLinear, torch.Tensor, torch.Tensor]:
    W = linear_weight(t.module).detach()  # (d_out, d_in)
    codes, c, A, B = loftq_init(W, config.r, config.bits, config.n_iter, config.block_size, config.alpha / config.r)
    return NFLinear(t.module, codes, c, config.bits), A, B


def apply(model: nn.Module, config: LoftQConfig) -> nn.Module:
    freeze_base(model)

    def wrap(t: Target) -> LoftQLinear:
        base, A, B = _init(t, config)
        layer = LoftQLinear(base, config.r, config.alpha)
        with torch.no_grad():
            # LoftQ init instead of LoRA's (B = 0): Q + s B A approximates the full-precision W
            layer.A.copy_(A)
            layer.B.copy_(B)
        return layer

    replace_modules(model, config.target_modules, wrap)
    return model


def initialized_copy(model: nn.Module, config: LoftQConfig) -> nn.Module:
    """The base model with each target's W replaced by the dense Q + s B A of the LoftQ init (init reference)."""
    with torch.no_grad():
        for t in find_targets(model, config.target_modules):
            base, A, B = _init(t, config)
            linear_weight(t.module).copy_(base.dequantize() + (config.alpha / config.r) * B @ A)
    return model
