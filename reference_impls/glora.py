"""GLoRA: Generalized LoRA (one adapted weight and bias from five learnable paths).

Equation:   h = (W0 + W0 ⊙ A + B) x + (b0 + b0 ⊙ D + E + W0 C)
            A, B ∈ R^{d_out × d_in} (default: rank-r products),  C ∈ R^{d_in} (default: rank-r product of
            shape d_in × 1),  D, E scalars (default) or vectors;  each path may also be a vector, a constant
            or absent (config_a_b, config_c, config_d_e)
Trainable:  2 * r * (d_in + d_out) per targeted module without a bias (catalog: trainable_params.per_target);
            on a layer with a bias the defaults add C (r * (d_in + 1)) and D, E (1 each)
Paper:      "One-for-All: Generalized LoRA for Parameter-Efficient Fine-tuning", Arnav Chavan et al., 2023
            (arXiv preprint), arXiv 2306.07967.

A scales W0 element-wise, B adds to it, C shifts the bias through W0 (a prompt-like term in the input
space), D scales the bias and E adds to it; the paper chooses the form of each path by an evolutionary
search per layer, peft (and this file) fixes one form for all layers. Every path starts at zero (the
low-rank paths through a zero factor), so the model starts unchanged, and since the effective weight and
bias are plain tensors the result merges into the base layer.

Forms as in peft: "lora" = X_d X_u (X_d zero, X_u Kaiming-uniform), "vector" = one value per row (a column
vector, broadcast along d_in) for A, B and C, one per output feature for D and E, "constant" = one scalar,
"none" = no path. C, D and E exist only on a layer with a bias.

Checked against: the paper's unified formulation (W0 + W0 A + B, and C W0 + D b0 + E + b0);
peft 0.21.2 `peft/tuners/glora/layer.py` (the path forms, weight_eff and bias_eff, merge). Unlike peft
(layers with in_features), this also wraps GPT-2's Conv1D.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import Wrapper, freeze_base, kaiming_uniform_, linear_dims, linear_weight, replace_modules

FORMS = {"a_b": ("lora", "vector", "constant", "none"), "c": ("lora", "vector", "none"),
         "d_e": ("vector", "constant", "none")}


@dataclass
class GLoRAConfig:
    r: int = 8                        # rank of every path configured as lora
    config_a_b: str = "lora"          # form of A and B: lora | vector | constant | none
    config_c: str = "lora"            # form of C: lora | vector | none (layers with a bias)
    config_d_e: str = "constant"      # form of D and E: vector | constant | none (layers with a bias)
    target_modules: tuple[str, ...] = ("q", "v")


class Path(nn.Module):
    """One GLoRA path: a rank-r product (rows × cols), a vector of `vector_shape`, a scalar, or nothing (0)."""

    def __init__(self, form: str, rows: int, cols: int, r: int, vector_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.form = form
        if form == "lora":
            self.Xd = nn.Parameter(torch.zeros(rows, r))                   # (rows, r); zero: the path starts at 0
            self.Xu = nn.Parameter(kaiming_uniform_(torch.empty(r, cols)))  # (r, cols)
        elif form in ("vector", "constant"):
            self.X = nn.Parameter(torch.zeros(vector_shape if form == "vector" else ()))

    def forward(self) -> torch.Tensor | float:
        if self.form == "lora":
            return self.Xd @ self.Xu
        return self.X if self.form in ("vector", "constant") else 0.0


class GLoRALinear(Wrapper):
    def __init__(self, base: nn.Module, r: int, config_a_b: str, config_c: str, config_d_e: str) -> None:
        super().__init__()
        for key, form in (("a_b", config_a_b), ("c", config_c), ("d_e", config_d_e)):
            if form not in FORMS[key]:
                raise ValueError(f"config_{key} must be one of {', '.join(FORMS[key])}, got '{form}'")
        d_in, d_out = linear_dims(base)
        self.base = base
        self.A = Path(config_a_b, d_out, d_in, r, (d_out, 1))
        self.B = Path(config_a_b, d_out, d_in, r, (d_out, 1))
        has_bias = getattr(base, "bias", None) is not None
        self.C = Path(config_c if has_bias else "none", d_in, 1, r, (d_in, 1))
        self.D = Path(config_d_e if has_bias else "none", 0, 0, r, (d_out,))
        self.E = Path(config_d_e if has_bias else "none", 0, 0, r, (d_out,))
        self.merged = False
        self._saved: tuple | None = None

    def effective(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W0 + W0 ⊙ A + B, b0 + b0 ⊙ D + E + W0 C): the adapted weight (d_out, d_in) and bias (d_out,)."""
        W0, b0 = linear_weight(self.base), getattr(self.base, "bias", None)
        W = W0 + W0 * self.A() + self.B()
        if b0 is None:
            return W, None
        C = self.C()
        shift = (W0 @ C).squeeze(-1) if isinstance(C, torch.Tensor) else 0.0  # W0 C: (d_out,)
        return W, b0 + b0 * self.D() + self.E() + shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        if self.merged:
            return self.base(x)
        W, b = self.effective()
        return F.linear(x, W, b)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            W, b = self.effective()
            bias = getattr(self.base, "bias", None)
            self._saved = (linear_weight(self.base).clone(), None if bias is None else bias.clone())
            linear_weight(self.base).copy_(W)
            if b is not None:
                bias.copy_(b)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:  # W0 enters A's and C's terms, so restore the kept originals rather than invert
            W0, b0 = self._saved
            linear_weight(self.base).copy_(W0)
            if b0 is not None:
                self.base.bias.copy_(b0)
            self._saved, self.merged = None, False


def apply(model: nn.Module, config: GLoRAConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules, lambda t: GLoRALinear(
        t.module, config.r, config.config_a_b, config.config_c, config.config_d_e))
    return model
