"""DiReFT: LoReFT without the orthonormality constraint and without the subtraction of R h.

Equation:   Φ(h) = h + W2ᵀ(W1 h + b),   W1, W2 ∈ R^{r × d} unconstrained, b ∈ R^r
            (in loreft.py's names W1 = W, W2 = R); a low-rank edit written straight into the hidden state, at the
            same places as LoReFT: every block's output, the first prefix_positions and last suffix_positions positions.
Trainable:  per layer  units * (2 * d_model * r + r),
            units = min(p, 1) + min(s, 1) − tied_weights · min(p, 1) · min(s, 1)
Paper:      "ReFT: Representation Finetuning for Language Models", Zhengxuan Wu, Aryaman Arora, Zheng Wang, Atticus
            Geiger, Dan Jurafsky, Christopher D. Manning, Christopher Potts, 2024 (NeurIPS 2024), arXiv 2404.03592
            (the ablation of LoReFT "that trades some performance for increased efficiency").

Checked against: AdapterHub adapters 1.3.0 (commit 88f18eb, DiReftConfig: orthogonality=False,
subtract_projection=False, "as proposed in Wu et al. (2024)") and pyreft (github.com/stanfordnlp/pyreft @
dafd099): the form above is pyreft's NodireftIntervention, NodiReFT(h) = h + W2ᵀ(W1 h + b), the type its
examples/loreft README tunes with; pyreft's class named DireftIntervention keeps an orthonormal R, which this
file (like AdapterHub) does not. test_direft.py pins Φ. Simplifications and initialisation as loreft.py.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from reference_impls.loreft import attach_interventions


@dataclass
class DiReFTConfig:
    r: int = 1                    # rank of the update
    prefix_positions: int = 3     # p: the first p positions are edited
    suffix_positions: int = 0     # s: the last s positions are edited
    tied_weights: bool = False    # one unit for prefix and suffix positions instead of one each
    dropout: float = 0.05         # dropout on the edited representation


def apply(model: nn.Module, config: DiReFTConfig) -> nn.Module:
    return attach_interventions(model, config, orthogonal=False, subtract=False)
