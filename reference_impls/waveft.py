"""WaveFT: sparse trainable coefficients in the wavelet domain of each weight.

Equation:   C ∈ R^{d_out × d_in} zero except at n = n_frequency fixed random positions (trained values)
            ΔW = s · IDWT2(C),  C read as the four quadrants (cA | cH ; cV | cD) of a one-level 2D transform
            h = W0 x + ΔW x
Trainable:  n_frequency per targeted module      (catalog: trainable_params.per_target)
Paper:      "Exploring Sparsity for Parameter Efficient Fine Tuning Using Wavelets", Ahmet Bilican et al., 2025,
            arXiv 2505.12532.

A few coefficients in the wavelet domain spread, through the inverse transform, into a dense update of
generally high rank, and the parameter count can be set exactly (even below a rank-1 LoRA's). The
positions are the first n entries of a permutation of the d_out · d_in positions drawn from a CPU
generator seeded with `random_loc_seed` (peft), the same for every module of one shape. The coefficients
start at zero, so ΔW = 0 and the adapted model starts equal to the base model; ΔW merges into W0.

Only the Haar wavelet (db1, the default) is implemented here: with it the one-level inverse is, along
each axis, x[2k] = (a[k] + d[k]) / √2, x[2k + 1] = (a[k] − d[k]) / √2, with cA low-low, cV low on rows and
high on columns, cH high on rows and low on columns, cD high-high (peft's waverec2d layout); an odd dimension is
padded by one and cropped after the transform. Other families are refused. use_idwt=False adds s·C to W0
directly (a sparse update, as SHiRA).

Checked against: the paper's method section (trainable sparse coefficients in the 2D wavelet domain,
inverse transform to the weight update, scaled); peft 0.21.2 `peft/tuners/waveft/layer.py` (update_layer:
the random positions; get_delta_weight: padding, quadrants, waverec2d, cropping; forward) and
`waverec2d.py` (the inverse, compared with ours for db1); the oracle tests compare outputs, gradients and
merged weights with peft's WaveFTModel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import AdditiveUpdate, freeze_base, linear_dims, replace_modules


@dataclass
class WaveFTConfig:
    n_frequency: int = 2592                       # trainable wavelet coefficients per matrix
    scaling: float = 25.0                         # s
    wavelet_family: str = "db1"                   # only db1 (Haar) here
    use_idwt: bool = True                         # False: add s C to W directly
    random_loc_seed: int = 777                    # seed of the coefficient positions
    target_modules: tuple[str, ...] = ("q", "v")  # roles or module-name suffixes


def haar_inverse_1d(lo: torch.Tensor, hi: torch.Tensor, dim: int) -> torch.Tensor:
    """One-level inverse Haar transform along `dim`: two halves of length m -> one signal of length 2m."""
    a, d = lo.movedim(dim, -1), hi.movedim(dim, -1)
    x = torch.stack(((a + d) / math.sqrt(2), (a - d) / math.sqrt(2)), dim=-1).flatten(-2)  # interleave
    return x.movedim(-1, dim)


def haar_inverse_2d(C: torch.Tensor) -> torch.Tensor:
    """(H, W) coefficients, H and W even, as quadrants (cA | cH ; cV | cD) -> (H, W) signal."""
    H2, W2 = C.shape[0] // 2, C.shape[1] // 2
    cA, cH, cV, cD = C[:H2, :W2], C[:H2, W2:], C[H2:, :W2], C[H2:, W2:]
    low_rows = haar_inverse_1d(cA, cV, dim=1)   # (H2, W)
    high_rows = haar_inverse_1d(cH, cD, dim=1)  # (H2, W)
    return haar_inverse_1d(low_rows, high_rows, dim=0)  # (H, W)


class WaveFTLinear(AdditiveUpdate):
    def __init__(self, base: nn.Module, name: str, config: WaveFTConfig) -> None:
        super().__init__()
        d_in, d_out = linear_dims(base)
        n = config.n_frequency
        if not 1 <= n <= d_in * d_out:
            raise ValueError(f"WaveFT: n_frequency={n} must lie in 1..{d_in * d_out} (d_in · d_out) for {name}")
        if config.use_idwt and config.wavelet_family != "db1":
            raise ValueError(f"WaveFT: wavelet_family '{config.wavelet_family}' is not implemented here; use db1")
        self.base, self.d_in, self.d_out = base, d_in, d_out
        self.scaling, self.use_idwt = config.scaling, config.use_idwt
        g = torch.Generator().manual_seed(config.random_loc_seed)
        self.register_buffer("index", torch.randperm(d_out * d_in, generator=g)[:n])  # (n,) flat positions
        # zero init: C = 0, so ΔW = 0 and the wrapped layer starts identical to the base layer
        self.coefficients = nn.Parameter(torch.zeros(n))  # (n,)
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        H, W = self.d_out + self.d_out % 2, self.d_in + self.d_in % 2  # even sizes for the one-level transform
        rows, cols = self.index // self.d_in, self.index % self.d_in
        C = self.coefficients.new_zeros(H if self.use_idwt else self.d_out, W if self.use_idwt else self.d_in)
        C = C.index_put((rows, cols), self.coefficients)
        if self.use_idwt:
            C = haar_inverse_2d(C)[: self.d_out, : self.d_in]  # crop the padding
        return self.scaling * C  # (d_out, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)  # (B, T, d_out)
        return h if self.merged else h + F.linear(x, self.delta_weight())


def apply(model: nn.Module, config: WaveFTConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules, lambda t: WaveFTLinear(t.module, t.name, config))
    return model
