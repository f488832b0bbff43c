"""NoReFT: LoReFT without the orthonormality constraint on R.

Equation:   Φ(h) = h + Rᵀ(W h + b − R h),   R, W ∈ R^{r × d} unconstrained, b ∈ R^r
            (pyreft writes it NoReFT(h) = h + W2ᵀ(W1 h + b − W2 h)); placement, positions and units as in
            loreft.py: every block's output, the first prefix_positions and last suffix_positions positions.
Trainable:  per layer  units * (2 * d_model * r + r),
            units = min(p, 1) + min(s, 1) − tied_weights · min(p, 1) · min(s, 1)
Paper:      "ReFT: Representation Finetuning for Language Models", Zhengxuan Wu, Aryaman Arora, Zheng Wang, Atticus
            Geiger, Dan Jurafsky, Christopher D. Manning, Christopher Potts, 2024 (NeurIPS 2024), arXiv 2404.03592
            (the orthogonality ablation of LoReFT).

Checked against: pyreft (github.com/stanfordnlp/pyreft @ dafd099, pyreft/interventions.py NoreftIntervention:
proj_layer = Linear(d, r) used as both R h and Rᵀ(·), learned_source = Linear(d, r) with bias, dropout on the edited
representation; pyreft's add_bias option would add a bias to R h, left out here as in AdapterHub) and AdapterHub
adapters 1.3.0 (commit 88f18eb, NoReftConfig = LoReftConfig with orthogonality=False). test_noreft.py pins Φ and
that R is left unconstrained. Simplifications and initialisation as loreft.py (R from nn.Linear's init here).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from reference_impls.loreft import attach_interventions


@dataclass
class NoReFTConfig:
    r: int = 1                    # rank of the edited subspace
    prefix_positions: int = 3     # p: the first p positions are edited
    suffix_positions: int = 0     # s: the last s positions are edited
    tied_weights: bool = False    # one unit for prefix and suffix positions instead of one each
    dropout: float = 0.05         # dropout on the edited representation


def apply(model: nn.Module, config: NoReFTConfig) -> nn.Module:
    return attach_interventions(model, config, orthogonal=False, subtract=True)
