"""QLoRA: LoRA on a base model stored in 4-bit NormalFloat (NF4) with double-quantised constants.

Equation:   h = dequant(W_NF4) x + (alpha / r) * B A dropout(x)
            NF4 storage, per block of block_size weights:  c = max|w|,  code = argmin_j |w / c - q_j|
            (q_0..q_15: the NF4 levels, quantiles of N(0, 1) rescaled to [-1, 1] with an exact 0)
            double quantisation of the constants:  c ≈ μ + ĉ,  ĉ = 8-bit float (FP8 E4M3) blockwise absmax
            quantisation of c - μ over blocks of double_quant_block_size constants (μ = mean of c)
            dequant: w ≈ q_code * (μ + ĉ)
Trainable:  r * (d_in + d_out) per targeted module         (catalog: trainable_params.per_target)
Paper:      "QLoRA: Efficient Finetuning of Quantized LLMs", Tim Dettmers et al., 2023 (NeurIPS 2023),
            arXiv 2305.14314.

Error bound (checked by the tests): with g the largest gap between adjacent NF4 levels and c₂ the
second-level absmax of a constant's block, every weight satisfies
    |w - ŵ| <= c * g / 2  +  max(|c - μ| / 16, c₂ / (448 * 1024))
(first term: rounding w / c to the nearest level; second: |q| <= 1 times the FP8 rounding of c - μ,
which is scaled by 448 / c₂ into E4M3's range: 3 mantissa bits round a normal number to within 2^-4 of
itself, a subnormal to within half its spacing 2^-9).

Written in plain torch so it runs on CPU; weights are dequantised on every forward, in the input's
dtype. As in the paper, the constants are quantised to 8-bit floats (here torch.float8_e4m3fn). The
paper's paged optimisers are out of scope. Codes are packed two per byte, so the frozen weights take 4
bits each plus about 8.5 bits per block of 64 for the constants.
Not mergeable without giving up the 4-bit storage (QA-LoRA addresses this); merge() raises.
Checked against: the NF4 levels against bitsandbytes' create_normal_map(offset = 0.9677) as recomputed
from normal quantiles by the test (the values above); block sizes 64 (NF4) and 256 (constants) and the
mean-centred 8-bit-float double quantisation as the paper's §3 describes them (recorded when this file
was written; the section was not re-read in this pass); the LoRA part is lora.py (checked against peft).
The tests pin the levels, the packed storage, the derived error bound and the FP8 rounding of the
constants. bitsandbytes itself is not installed here, so no oracle comparison with its kernels is made.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import QuantizedLinear, Target, find_targets, freeze_base, linear_weight, replace_modules
from reference_impls.lora import LoRALinear

# The 16 NF4 levels as bitsandbytes and the paper define them (create_normal_map with offset 0.9677):
# 8 positive quantiles and 7 negative ones of N(0, 1), each side normalised to reach ±1, plus an exact 0.
NF4_LEVELS = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0])


def nf4_levels_from_normal_quantiles(offset: float = 0.9677083) -> torch.Tensor:
    """Derive the table above: quantiles of N(0, 1) at evenly spaced probabilities, rescaled to [-1, 1]."""
    ndtri = torch.special.ndtri
    positive = ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])   # 8 values
    negative = -ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])  # 7 values
    levels = torch.cat([positive, torch.zeros(1, dtype=torch.float64), negative]).sort().values
    return (levels / levels.abs().max()).float()


@dataclass
class QLoRAConfig:
    r: int = 64                          # LoRA rank
    alpha: float = 16                    # the update is scaled by alpha / r
    dropout: float = 0.1                 # dropout on the LoRA input (the authors' 7B script: 0.1)
    block_size: int = 64                 # weights per NF4 block (one absmax constant each)
    double_quant_block_size: int = 256   # first-level constants per second-level block
    target_modules: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")  # every linear layer of the blocks


def _blocks(x: torch.Tensor, size: int) -> torch.Tensor:
    """Flatten and zero-pad to whole blocks: (n_blocks, size)."""
    x = x.flatten()
    return F.pad(x, (0, -x.numel() % size)).view(-1, size)


def quantize_nf4(W: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes (n, block_size) uint8 in 0..15, absmax (n,) float32) for the flattened weight."""
    w = _blocks(W.float(), block_size)                       # (n, block_size)
    c = w.abs().amax(dim=1).clamp_min(1e-12)                 # (n,), avoid 0/0 on an all-zero block
    codes = ((w / c[:, None])[..., None] - NF4_LEVELS.to(w.device)).abs().argmin(-1)  # (n, block_size)
    return codes.to(torch.uint8), c


FP8_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448


def quantize_fp8(c: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Double quantisation: (FP8 E4M3 codes (m, block_size), second-level absmax (m,), mean μ)."""
    mu = c.mean()  # constants are all positive; centring them uses both signs of the 8-bit code
    x = _blocks(c - mu, block_size)                          # (m, block_size)
    c2 = x.abs().amax(dim=1).clamp_min(1e-12)                # (m,)
    return (x / c2[:, None] * FP8_MAX).to(torch.float8_e4m3fn), c2, mu  # scaled into [-448, 448], rounded


def pack(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte: (N,) uint8 in 0..15 -> (N/2,) uint8."""
    codes = codes.flatten()
    return codes[0::2] << 4 | codes[1::2]


def unpack(packed: torch.Tensor) -> torch.Tensor:
    return torch.stack([packed >> 4, packed & 0xF], dim=1).flatten()  # (N,)


class NF4Linear(QuantizedLinear):
    """A frozen linear layer whose weight is stored in NF4 with double-quantised constants."""

    def __init__(self, base: nn.Module, block_size: int = 64, double_quant_block_size: int = 256) -> None:
        super().__init__(base)
        W = linear_weight(base).detach()  # (d_out, d_in)
        codes, c = quantize_nf4(W, block_size)
        c_q, c2, mu = quantize_fp8(c, double_quant_block_size)
        self.register_buffer("codes", pack(codes))   # (n_blocks * block_size / 2,) uint8
        self.register_buffer("c_q", c_q)             # (m, double_quant_block_size) float8_e4m3fn
        self.register_buffer("c2", c2)               # (m,) float32
        self.register_buffer("mu", mu)               # () float32
        self.n_blocks = codes.shape[0]

    def absmax(self) -> torch.Tensor:
        """Dequantised first-level constants: (n_blocks,)."""
        return ((self.c_q.float() / FP8_MAX) * self.c2[:, None]).flatten()[: self.n_blocks] + self.mu

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        q = NF4_LEVELS.to(self.codes.device)[unpack(self.codes).long()].view(self.n_blocks, -1)  # (n, block)
        w = (q * self.absmax()[:, None]).flatten()[: self.in_features * self.out_features]
        return w.view(self.out_features, self.in_features).to(dtype)  # (d_out, d_in)



class QLoRALinear(LoRALinear):
    def merge(self) -> None:
        raise NotImplementedError("merging into NF4 weights would need dequantising them (see QA-LoRA)")

    unmerge = merge


def apply(model: nn.Module, config: QLoRAConfig) -> nn.Module:
    freeze_base(model)

    def wrap(t: Target) -> QLoRALinear:
        base = NF4Linear(t.module, config.block_size, config.double_quant_block_size)
        return QLoRALinear(base, config.r, config.alpha, config.dropout)

    replace_modules(model, config.target_modules, wrap)
    return model


def dequantized_copy(model: nn.Module, config: QLoRAConfig) -> nn.Module:
    """The base model with each target's weight replaced by its NF4 round trip (the init reference)."""
    with torch.no_grad():
        for t in find_targets(model, config.target_modules):
            W = NF4Linear(t.module, config.block_size, config.double_quant_block_size).dequantize()
            linear_weight(t.module).copy_(W)
    return model
