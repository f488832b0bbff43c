"""Super-Tuning (Super / Supra): train a fixed sparse set of weight entries chosen by a pruning score.

Equation:   h = (W0 + ΔS) x + b  [+ (alpha / r) B A dropout(x)  in the Supra hybrid]
            ΔS ∈ R^{d_out × d_in} is zero except at the k entries of W0 with the largest |W0|
            (the smallest with select_top = false), k = floor(d_in d_out (1 - sparsity)); its k values are
            trained, the positions are fixed when the method is applied. ΔS = 0 and B = 0 at init.
Trainable:  floor(d_in * d_out * (1 - sparsity)) per targeted module, plus r * (d_in + d_out) when r is set
                                                      (catalog: trainable_params.per_target, Super only)
Paper:      "Super-Tuning: From Activation-Aware Pruning to Sparse Fine-Tuning", Ivan Ilin, Philip Zmushko,
            Peter Richtárik, 2026, arXiv 2607.09287.

Scoring: magnitude |W0|, as peft offers it (peft's docstring: magnitude top-k was the paper's best single
mechanism on Llama-3-8B and needs no calibration data); the paper's activation-aware (Wanda) score,
|W0_ij| · ||X_j||, needs a calibration pass and is not implemented here. On GPT-2's Conv1D the score is
taken on the (d_out, d_in) view of the weight, so the chosen entries are the same as for a linear layer
(peft supports nn.Linear only). Mergeable: ΔS (and the LoRA update) fold into W0.

Checked against: peft 0.21.2 `peft/tuners/supertuning/layer.py` (topk over |W|.flatten() with k =
int(numel · (1 - sparsity)), zero values scatter-added onto the flat weight in the forward, Supra's LoRA A
Kaiming-uniform, B = 0, lora_alpha = 2 r when unset, merge = scatter_add into W) and `config.py`; the oracle
test compares outputs, gradients, counts and merges with SupertuningModel on tiny Llama, BERT and T5, in
Super and Supra modes. Numeric pin: test_supertuning.py recomputes the selected positions by sorting |W0|
and the adapted weight W0 + ΔS on a small layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import AdditiveUpdate, freeze_base, kaiming_uniform_, linear_dims, linear_weight, replace_modules


@dataclass
class SuperTuningConfig:
    sparsity: float = 0.99                 # share of each weight's entries left frozen (0.99 trains 1%)
    select_top: bool = True                # train the largest-|W0| entries (False: the smallest)
    r: int | None = None                   # rank of Supra's added LoRA; None trains the sparse support only
    alpha: float | None = None             # Supra's LoRA is scaled by alpha / r (None: 2 r, peft's default)
    dropout: float = 0.0                   # dropout on the input of Supra's LoRA branch
    target_modules: tuple[str, ...] = ("q", "v")


def select_positions(W: torch.Tensor, sparsity: float, select_top: bool) -> torch.Tensor:
    """Flat indices (k,) into W (d_out, d_in) of the k = floor(numel (1 - sparsity)) entries to train."""
    k = int(W.numel() * (1 - sparsity))
    if k < 1:
        raise ValueError(f"sparsity {sparsity} leaves no trainable entry of a {tuple(W.shape)} weight")
    return torch.topk(W.detach().abs().flatten(), k=k, largest=select_top).indices


class SuperTuningLinear(AdditiveUpdate):
    def __init__(self, base: nn.Module, config: SuperTuningConfig) -> None:
        super().__init__()
        d_in, d_out = linear_dims(base)
        self.base = base
        self.register_buffer("positions", select_positions(linear_weight(base), config.sparsity, config.select_top))
        # zero init: ΔS = 0, so the wrapped layer starts identical to the base layer
        self.values = nn.Parameter(torch.zeros(self.positions.numel()))  # (k,)
        self.r = config.r
        if config.r is not None:  # Supra: a LoRA update on top of the sparse support
            self.scaling = (config.alpha if config.alpha is not None else 2 * config.r) / config.r
            self.A = nn.Parameter(kaiming_uniform_(torch.empty(config.r, d_in)))  # (r, d_in)
            self.B = nn.Parameter(torch.zeros(d_out, config.r))  # (d_out, r), zero: no update at init
            self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.merged = False

    def sparse_delta(self) -> torch.Tensor:  # ΔS: (d_out, d_in)
        W = linear_weight(self.base)
        flat = torch.zeros(W.numel(), dtype=self.values.dtype, device=W.device)
        return flat.scatter_add(0, self.positions, self.values).view(W.shape)

    def delta_weight(self) -> torch.Tensor:  # (d_out, d_in)
        delta = self.sparse_delta()
        return delta if self.r is None else delta + self.scaling * self.B @ self.A

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        if self.merged:
            return self.base(x)
        h = F.linear(x, linear_weight(self.base) + self.sparse_delta(), self.base.bias)  # (B, T, d_out)
        if self.r is None:
            return h
        return h + self.scaling * F.linear(F.linear(self.dropout(x), self.A), self.B)


def apply(model: nn.Module, config: SuperTuningConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules, lambda t: SuperTuningLinear(t.module, config))
    return model
