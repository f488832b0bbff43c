"""QA-LoRA: Quantization-Aware Low-Rank Adaptation (LoRA on group-pooled inputs of a group-wise INT base).

Equation:   base weight, group-wise INT-N (asymmetric min-max), one (α, β) per output row and group of L
            consecutive input features:
                W̃[o, i] = α[o, g(i)] · Ŵ[o, i] + β[o, g(i)],   Ŵ ∈ {0, ..., 2^N - 1},  g(i) = i // L
            adapter on the group-averaged input:
                h = W̃ x + s · B A pool(x),   pool(x)_g = (1/L) Σ_{i ∈ group g} x_i,   s = alpha / r
                A ∈ R^{r × d_in/L},  B ∈ R^{d_out × r}
            merge: s · B A pool(x) = ΔW x with ΔW[o, i] = s · (B A)[o, g(i)] / L, constant within a group,
            so it folds into the zero points:  β'[o, g] = β[o, g] + s · (B A)[o, g] / L,  Ŵ and α unchanged.
Trainable:  r * (d_in / group_size + d_out) per targeted module   (catalog: trainable_params.per_target)
Paper:      "QA-LoRA: Quantization-Aware Low-Rank Adaptation of Large Language Models", Yuhui Xu et al.,
            2023 (ICLR 2024), arXiv 2309.14717.

The merged model is again a group-wise INT-N model with the same integer codes and scales: only the
zero points β change (they are real numbers, stored in float, as in the authors' merge.py, which
subtracts s·(BA)ᵀ/L/α from the GPTQ `qzeros`). Pooling is an average, as in the authors' code
(nn.AvgPool1d(L)); peft's QALoraLinearVariant multiplies the average by d_in / L, which only rescales A.

Deviations: the paper quantizes the base model with GPTQ (calibration data, error feedback); here the
same group-wise INT-N format is filled by round-to-nearest min-max quantization, which needs no data.
The format and everything QA-LoRA adds (pooling, merge into β) are as in the paper. Codes are stored one
per uint8 (not packed), and weights are dequantized on every forward in the input's dtype.
Init as LoRA: A ~ Kaiming-uniform, B = 0, so the model starts equal to the quantized base model.
Checked against: the authors' code github.com/yuhuixu1993/qa-lora @91604c71: peft_utils.py (the LoRA
layer built with in_features // group_size inputs; self.qa_pool = nn.AvgPool1d(group_size) on the input;
scaling alpha / r) and merge.py (qzeros -= (B A)ᵀ · scale / group_size / scales, scale = 16 / 64; GPTQ's
zero point is subtracted, so this is β' = β + s (B A) / L in this file's W̃ = α Ŵ + β form); peft 0.21.2
(installed) QALoraLinearVariant, compared by the oracle test with A rescaled by L / d_in. The paper's
abstract was read, not its method section. group_size defaults to 16 (peft's qalora_group_size); the
authors' scripts use 32.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import QuantizedLinear, Target, find_targets, freeze_base, kaiming_uniform_, linear_weight, \
    replace_modules


@dataclass
class QALoRAConfig:
    r: int = 64                  # LoRA rank
    alpha: float = 16            # the update is scaled by alpha / r
    group_size: int = 16         # L: input features sharing one (scale, zero); also the pooling width
    bits: int = 4                # N: bit width of the integer codes
    target_modules: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")  # every linear layer of the blocks


def quantize_groupwise(W: torch.Tensor, group_size: int, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Min-max asymmetric INT-`bits` quantization along the input dimension.

    W: (d_out, d_in) -> codes (d_out, d_in) uint8 in [0, 2^bits - 1], scale α (d_out, n_g), zero β (d_out, n_g).
    """
    d_out, d_in = W.shape
    if d_in % group_size:
        raise ValueError(f"group_size {group_size} must divide d_in {d_in}")
    w = W.float().view(d_out, d_in // group_size, group_size)      # (d_out, n_g, L)
    lo, hi = w.amin(-1), w.amax(-1)                                # (d_out, n_g)
    alpha = ((hi - lo) / (2 ** bits - 1)).clamp_min(1e-12)         # (d_out, n_g); a constant group gets codes 0
    codes = ((w - lo[..., None]) / alpha[..., None]).round().clamp(0, 2 ** bits - 1)  # (d_out, n_g, L)
    return codes.view(d_out, d_in).to(torch.uint8), alpha, lo


def dequantize_groupwise(codes: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """α · Ŵ + β with (α, β) broadcast over each group: (d_out, d_in)."""
    d_out, d_in = codes.shape
    n_g = alpha.shape[1]
    w = codes.view(d_out, n_g, d_in // n_g).float()                # (d_out, n_g, L)
    return (alpha[..., None] * w + beta[..., None]).view(d_out, d_in)


class INTLinear(QuantizedLinear):
    """A frozen linear layer stored as group-wise INT codes with per-group scale α and zero point β."""

    def __init__(self, base: nn.Module, group_size: int, bits: int) -> None:
        super().__init__(base)
        self.group_size, self.bits = group_size, bits
        codes, alpha, beta = quantize_groupwise(linear_weight(base).detach(), group_size, bits)
        self.register_buffer("codes", codes)   # (d_out, d_in) uint8
        self.register_buffer("alpha", alpha)   # (d_out, n_g) float32, scales
        self.register_buffer("beta", beta)     # (d_out, n_g) float32, zero points (QA-LoRA's merge moves these)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_groupwise(self.codes, self.alpha, self.beta).to(dtype)  # (d_out, d_in)



class QALoRALinear(nn.Module):
    def __init__(self, base: INTLinear, r: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.L = base.group_size
        self.scaling = alpha / r
        n_g = base.in_features // self.L
        self.A = nn.Parameter(kaiming_uniform_(torch.empty(r, n_g)))  # (r, d_in / L)
        # zero init: B A = 0, so the wrapped layer starts identical to the quantized base layer
        self.B = nn.Parameter(torch.zeros(base.out_features, r))      # (d_out, r)
        self.merged = False

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def pool(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        return x.unflatten(-1, (-1, self.L)).mean(-1)  # (B, T, d_in / L), average over each quantization group

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)  # (B, T, d_out)
        if self.merged:
            return h
        z = F.linear(self.pool(x), self.A)  # (B, T, r)
        return h + F.linear(z * self.scaling, self.B)  # (B, T, d_out)

    def zero_shift(self) -> torch.Tensor:
        """The change of the zero points that merging makes: s · B A / L, (d_out, d_in / L)."""
        return self.scaling * (self.B @ self.A) / self.L

    def delta_weight(self) -> torch.Tensor:
        """The equivalent dense update ΔW: each group's shift repeated over its L columns, (d_out, d_in)."""
        return self.zero_shift().repeat_interleave(self.L, dim=1)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base.beta.add_(self.zero_shift())  # codes and scales untouched: still an INT-N layer
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.beta.sub_(self.zero_shift())
            self.merged = False


def apply(model: nn.Module, config: QALoRAConfig) -> nn.Module:
    freeze_base(model)

    def wrap(t: Target) -> QALoRALinear:
        return QALoRALinear(INTLinear(t.module, config.group_size, config.bits), config.r, config.alpha)

    replace_modules(model, config.target_modules, wrap)
    return model


def dequantized_copy(model: nn.Module, config: QALoRAConfig) -> nn.Module:
    """The base model with each target's weight replaced by its INT round trip (the init reference)."""
    with torch.no_grad():
        for t in find_targets(model, config.target_modules):
            linear_weight(t.module).copy_(INTLinear(t.module, config.group_size, config.bits).dequantize())
    return model
