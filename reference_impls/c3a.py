"""C3A: Circular Convolution Adaptation (a block-circulant weight update).

Equation:   h = W0 x + ΔW x,   ΔW = (1 / d_in) [C(w_mn)]_{m,n},   C(w)[t, j] = w[(j − t) mod b]
            ΔW is (d_out / b) × (d_in / b) blocks, block (m, n) the circulant matrix of the kernel w_mn ∈ R^b;
            applied with the FFT:  (ΔW x)_m = (1 / d_in) Σ_n Re FFT(IFFT(x_n) ⊙ FFT(w_mn))
Trainable:  d_in * d_out / block_size per targeted module      (catalog: trainable_params.per_target)
Paper:      "Parameter-Efficient Fine-Tuning via Circular Convolution", Aochuan Chen et al., 2025
            (Findings of ACL 2025), arXiv 2407.19342.

A circulant block is diagonalised by the DFT, so each block acts on its slice x_n of the input as a circular
convolution (a correlation, in the index order above) in O(b log b), and the update can have full rank with
d_in d_out / b parameters, which LoRA's rank is tied to. The 1 / d_in factor is peft's normalisation.

Initialisation: the kernels are drawn Xavier-uniform (peft's default, bound sqrt(6 / (d_in + d_out))), so the
adapted model does not start equal to the base model; init = "zeros" starts the update at 0 (peft:
init_weights=True). The update is a plain matrix and merges into W0.

Checked against: the paper (block-circulant ΔW applied by FFT); peft 0.21.2 `peft/tuners/c3a/layer.py`
and `utils.py` (c3a_kernel of shape (d_out / b, d_in / b, b), the FFT product above, the division by d_in,
the four initialisations). Unlike peft (nn.Linear only), this also wraps GPT-2's Conv1D.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._core import AdditiveUpdate, freeze_base, linear_dims, replace_modules

INITS = ("xavier_uniform", "kaiming_uniform", "gaussian", "zeros")


@dataclass
class C3AConfig:
    block_size: int = 256            # kernel length b; must divide d_in and d_out
    init: str = "xavier_uniform"     # xavier_uniform | kaiming_uniform | gaussian | zeros
    target_modules: tuple[str, ...] = ("q", "v")


def block_circular(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Σ_n C(w_mn) x_n for every output block m, by the FFT: x (..., n b), w (m, n, b) -> (..., m b)."""
    xs = x.reshape(*x.shape[:-1], w.shape[1], w.shape[2])  # (..., n, b): the input slices x_n
    spectrum = torch.einsum("...nk,mnk->...mk", torch.fft.ifft(xs), torch.fft.fft(w))  # (..., m, b)
    return torch.fft.fft(spectrum).real.flatten(-2)  # (..., m b)


class C3ALinear(AdditiveUpdate):
    def __init__(self, base: nn.Module, block_size: int, init: str = "xavier_uniform") -> None:
        super().__init__()
        d_in, d_out = linear_dims(base)
        b = block_size
        if b < 1 or d_in % b or d_out % b:
            raise ValueError(f"block_size {b} must divide d_in = {d_in} and d_out = {d_out}")
        if init not in INITS:
            raise ValueError(f"unknown init '{init}'; choose from {', '.join(INITS)}")
        self.base, self.b, self.d_in = base, b, d_in
        w = torch.zeros(d_out // b, d_in // b, b)  # (m blocks, n blocks, b): one kernel per block
        if init == "xavier_uniform":
            bound = math.sqrt(6.0 / (d_in + d_out))
            nn.init.uniform_(w, -bound, bound)
        elif init == "kaiming_uniform":
            nn.init.uniform_(w, -1 / math.sqrt(d_in), 1 / math.sqrt(d_in))
        elif init == "gaussian":
            nn.init.normal_(w)
        self.w = nn.Parameter(w)
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """The explicit block-circulant matrix (d_out, d_in), block (m, n)[t, j] = w_mn[(j − t) mod b] / d_in."""
        b = self.b
        t, j = torch.arange(b)[:, None], torch.arange(b)[None, :]
        blocks = self.w[:, :, (j - t) % b]                      # (m, n, b, b)
        m, n = blocks.shape[:2]
        return blocks.permute(0, 2, 1, 3).reshape(m * b, n * b) / self.d_in  # (d_out, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)
        if self.merged:
            return h
        return h + block_circular(x, self.w) / self.d_in  # (B, T, d_out)


def apply(model: nn.Module, config: C3AConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules, lambda t: C3ALinear(t.module, config.block_size, config.init))
    return model
