"""FourierFT: the weight update as a few learned coefficients of its 2-D Fourier spectrum.

Equation:   h = W0 x + ΔW x,   ΔW = α Re(IDFT2(F)),   F ∈ C^{d_out × d_in} zero except at n positions E,
            F[E_j] = c_j (real, trainable);   IDFT2 with torch's 1 / (d_out d_in) normalisation
Trainable:  n_frequency per targeted module      (catalog: trainable_params.per_target)
Paper:      "Parameter-Efficient Fine-Tuning with Discrete Fourier Transform", Ziqi Gao et al., 2024
            (ICML 2024), arXiv 2405.03003.

The n spectral positions E are drawn once, uniformly without replacement from the d_out × d_in grid, by a
generator seeded with random_loc_seed: every module of the same shape shares them, and only the seed needs
storing. Only the coefficients c are trained. The update is dense (a sum of n 2-D cosines and sines), so it
can have full rank while training n numbers per matrix.

Initialisation: c ~ N(0, 1) (peft's default, init_zero = False), so the adapted model does not start equal
to the base model; init_zero = True starts c at 0 and the model unchanged. ΔW merges into W0.

Checked against: the paper (the spectral entry matrix on positions shared by all layers, ΔW = α IDFT(F));
peft 0.21.2 `peft/tuners/fourierft/layer.py` (torch.randperm over d_out * d_in with the seeded generator,
row = index // d_in and column = index % d_in, ifft2(...).real * scaling).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import AdditiveUpdate, freeze_base, linear_dims, replace_modules


@dataclass
class FourierFTConfig:
    n_frequency: int = 1000           # trainable spectral coefficients per adapted matrix
    scaling: float = 150.0            # α, the factor on the reconstructed update
    random_loc_seed: int = 777        # seed of the spectral positions (shared by every module of a shape)
    init_zero: bool = False           # start the coefficients at zero (the model then starts unchanged)
    target_modules: tuple[str, ...] = ("q", "v")


def spectral_positions(d_out: int, d_in: int, n: int, seed: int) -> torch.Tensor:
    """n distinct (row, column) positions of the d_out × d_in spectrum, as a (2, n) index tensor."""
    flat = torch.randperm(d_out * d_in, generator=torch.Generator().manual_seed(seed))[:n]  # (n,)
    return torch.stack([flat // d_in, flat % d_in])  # (2, n)


class FourierFTLinear(AdditiveUpdate):
    def __init__(self, base: nn.Module, n_frequency: int, scaling: float, seed: int, init_zero: bool) -> None:
        super().__init__()
        d_in, d_out = linear_dims(base)
        if not 1 <= n_frequency <= d_in * d_out:
            raise ValueError(f"n_frequency must be 1..d_in * d_out = {d_in * d_out} for a {d_out} x {d_in} weight, "
                             f"got {n_frequency}")
        self.base, self.scaling, self.shape = base, scaling, (d_out, d_in)
        self.register_buffer("positions", spectral_positions(d_out, d_in, n_frequency, seed), persistent=False)
        self.c = nn.Parameter(torch.zeros(n_frequency) if init_zero else torch.randn(n_frequency))  # (n,)
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        spectrum = self.c.new_zeros(self.shape)  # (d_out, d_in), real: the learned entries are real numbers
        spectrum[self.positions[0], self.positions[1]] = self.c
        return torch.fft.ifft2(spectrum).real * self.scaling  # (d_out, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)
        return h if self.merged else h + F.linear(x, self.delta_weight())


def apply(model: nn.Module, config: FourierFTConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules, lambda t: FourierFTLinear(
        t.module, config.n_frequency, config.scaling, config.random_loc_seed, config.init_zero))
    return model
