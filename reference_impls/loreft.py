"""LoReFT (low-rank linear subspace representation finetuning): edit the residual stream at a few positions.

Equation:   Φ(h) = h + Rᵀ(W h + b − R h),   R ∈ R^{r × d} with orthonormal rows (R Rᵀ = I_r),
            W ∈ R^{r × d}, b ∈ R^r; the edit replaces the component R h of h in the subspace spanned by R's rows
            with W h + b and leaves the orthogonal complement alone. Applied to the hidden state h that a block
            writes to the residual stream (its output), in every block, at the first prefix_positions and the last
            suffix_positions positions of the sequence; all weights of the model stay frozen.
            Prefix and suffix positions each get their own (R, W, b) ("unit"), or share one with tied_weights.
Trainable:  per layer  units * (2 * d_model * r + r),  units = the position groups in use (prefix, suffix),
            one when tied_weights:  min(p, 1) + min(s, 1) − tied_weights · min(p, 1) · min(s, 1)
Paper:      "ReFT: Representation Finetuning for Language Models", Zhengxuan Wu, Aryaman Arora, Zheng Wang, Atticus
            Geiger, Dan Jurafsky, Christopher D. Manning, Christopher Potts, 2024 (NeurIPS 2024), arXiv 2404.03592.

Checked against: the authors' pyreft (github.com/stanfordnlp/pyreft @ dafd099, pyreft/interventions.py
LoreftIntervention: R an orthogonally parametrised (d, r) map, learned_source = Linear(d, r) with bias, dropout
on the edited representation; examples/loreft/train.py: interventions on the block output, two per layer only
when both prefix and suffix positions are used and weights are not shared) and AdapterHub adapters 1.3.0
(commit 88f18eb, methods/reft.py: the same unit, hooked on every layer's output, prefix positions first, suffix
positions overwrite on overlap). test_loreft.py pins Φ and R Rᵀ = I numerically.
Simplifications: every block is intervened on (pyreft's "-l all"; the paper also tunes the layer set);
positions count from the ends of each forward call's sequence, so padding is not skipped (pyreft computes the
positions per example from the prompt's length, AdapterHub from its padding offsets) and incremental decoding
with a key/value cache is not handled. AdapterHub always builds two units unless tied (one stays unused when
only prefix or only suffix positions are set); pyreft, and this file, build one per position group in use.
Initialisation: R from torch's orthogonal parametrisation of nn.Linear's init, W and b as nn.Linear, as both
libraries: the model does not start equal to the base model (W h + b ≠ R h). Not mergeable: the edit depends
on the token position.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._adapters import attach_after_block, blocks
from reference_impls._core import arch_symbols, freeze_base


@dataclass
class LoReFTConfig:
    r: int = 1                    # rank of the edited subspace
    prefix_positions: int = 3     # p: the first p positions are edited
    suffix_positions: int = 0     # s: the last s positions are edited
    tied_weights: bool = False    # one unit for prefix and suffix positions instead of one each
    dropout: float = 0.05         # dropout on the edited representation (pyreft and AdapterHub)


class ReFTUnit(nn.Module):
    """Φ(h) = h + Rᵀ(W h + b − R h), with or without R's orthonormality and the − R h term."""

    def __init__(self, d: int, r: int, orthogonal: bool = True, subtract: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.learned_source = nn.Linear(d, r)  # W: (r, d), b: (r,)
        projection = nn.Linear(d, r, bias=False)  # R: (r, d)
        if orthogonal:
            # R = Householder product of its own parameter: rows orthonormal at every step of training;
            # no trivialization, so R depends on the saved parameter alone (no hidden base buffer)
            projection = nn.utils.parametrizations.orthogonal(projection, orthogonal_map="householder",
                                                              use_trivialization=False)
        self.projection = projection
        self.subtract = subtract
        self.dropout = nn.Dropout(dropout)

    @property
    def R(self) -> torch.Tensor:  # (r, d)
        return self.projection.weight

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # h: (B, P, d), the hidden states at the edited positions
        R = self.R
        source = self.learned_source(h)  # (B, P, r): W h + b
        if self.subtract:
            source = source - h @ R.T    # (B, P, r): W h + b − R h
        return self.dropout(h + source @ R)  # (B, P, d): h + Rᵀ(...)


class ReFTIntervention(nn.Module):
    """Applies the units of one layer to the prefix and suffix positions of that layer's output."""

    def __init__(self, d: int, config, orthogonal: bool, subtract: bool) -> None:
        super().__init__()
        self.p, self.s = config.prefix_positions, config.suffix_positions
        self.units = nn.ModuleList(ReFTUnit(d, config.r, orthogonal, subtract, config.dropout)
                                   for _ in range(n_units_of(config)))

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # h: (B, T, d)
        T = h.shape[1]
        p, s = min(self.p, T), min(self.s, T)
        out = h.clone()
        # units: [prefix, suffix] when both groups are used and untied, else the one unit every group uses
        if p:
            out[:, :p] = self.units[0](h[:, :p])            # (B, p, d)
        if s:
            out[:, T - s:] = self.units[-1](h[:, T - s:])   # (B, s, d); written last, so it wins on overlap
        return out


def n_units_of(config) -> int:
    groups = int(config.prefix_positions > 0) + int(config.suffix_positions > 0)
    return 1 if config.tied_weights else groups


def attach_interventions(model: nn.Module, config, orthogonal: bool, subtract: bool) -> nn.Module:
    """Freeze the model and hook one ReFT intervention on every block's output (shared by LoReFT, NoReFT, DiReFT)."""
    if config.r < 1:
        raise ValueError(f"r must be at least 1, got {config.r}")
    p, s = config.prefix_positions, config.suffix_positions
    if p < 0 or s < 0 or p + s == 0:
        raise ValueError("prefix_positions and suffix_positions must be >= 0 and not both 0 (no position is edited)")
    freeze_base(model)
    d = arch_symbols(model.config)["d_model"]
    for _, block in blocks(model):
        attach_after_block(block, "reft", ReFTIntervention(d, config, orthogonal, subtract))
    return model


def apply(model: nn.Module, config: LoReFTConfig) -> nn.Module:
    return attach_interventions(model, config, orthogonal=True, subtract=True)
