"""SAM: Second-order Approximation Method, a sparse mask chosen by a second-order model of the fine-tuning loss.

Equation:   fine-tuning with a mask M (||M||_0 = k):  min_{M, Δθ} L(θ0 + M Δθ);  second-order Taylor expansion
            around the pretrained θ0 with a diagonal Hessian H = diag(h_1..h_n):
                L(θ0 + M Δθ) ≈ L(θ0) + Σ_i M_i (g_i Δθ_i + ½ h_i Δθ_i²),     g = ∇L(θ0)
            minimising over Δθ_i gives Δθ_i = -g_i / h_i and a loss drop of g_i² / (2 h_i) per selected entry,
            so the optimal mask keeps the k largest g_i² / h_i. With the Hessian approximated by a constant
            diagonal (h_i = h), this is the k largest g_i², with g the gradient summed over n_batches batches
            of task data at θ0 (no update in between).
            θ = θ0 + M ⊙ δ, only the k selected entries of δ are trained
Trainable:  n_params * density // 1   (catalog: trainable_params.total), exactly, over all parameters
Paper:      "On the Effectiveness of Parameter-Efficient Fine-Tuning", Zihao Fu, Haoran Yang, Anthony Man-Cho So,
            Wai Lam, Lidong Bing, Nigel Collier, 2022 (AAAI 2023), arXiv 2211.15583.

Follows the authors' released code (fuzihaofzh/AnalyzeParameterEfficientFinetune: runner.py, default
`bsearch` mode; scripts/train.sh: bsearch=0.005, burnin=600) for the estimate of g: gradients summed over
the burn-in batches at θ0 with no update, ranked by |Σ g| (equivalently (Σ g)²); the code's task head is
outside the mask and always trained. Deviation: that code applies the density to every encoder tensor
separately; here the k entries are chosen over all parameters together (the paper's ||M||_0 = k), so the
count equals the catalog's budget exactly. The constant-Hessian step is recalled from the paper, not
checked against its text. The selected entries are a sparse delta on the frozen tensors (_partial.py).
Task data: pass `data` to apply(); without it the built-in synthetic task is used (tests only).
Checked against: the authors' code github.com/fuzihaofzh/AnalyzeParameterEfficientFinetune @ea1a73b4,
src/runner.py (user_mode bsearch: for bs_step < burnin, bs_accu[p] += grad and the optimizer step is
skipped; at burnin, per tensor, topk(|bs_accu[p]|, k = bsearch · numel) is kept; gradients of the other
entries are zeroed for parameters whose name starts with "encoder") and scripts/train.sh (bsearch=0.005,
burnin=600). The paper's abstract was read; its second-order derivation (above) is as recalled.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from reference_impls._partial import Batch, attach_deltas, base_parameters, budget, default_data, gradients, top_k


@dataclass
class SAMConfig:
    density: float = 0.005   # k / n_params, share of all parameters selected for tuning
    n_batches: int = 600     # burn-in batches whose gradients at θ0 are summed into g (authors' train.sh)


def second_order_scores(model: nn.Module, data: Iterable[Batch], n_batches: int) -> dict[str, torch.Tensor]:
    """g_i² / h_i with h_i = 1 (constant diagonal Hessian), g = Σ over n_batches batches of ∇L(θ0)."""
    params = base_parameters(model)
    g = {n: torch.zeros_like(p) for n, p in params.items()}
    for i, batch in enumerate(data):
        if i == n_batches:
            break
        for n, grad in gradients(model, batch, params).items():
            g[n] += grad
    return {n: gi ** 2 for n, gi in g.items()}


def sam_mask(model: nn.Module, config: SAMConfig, data: Iterable[Batch]) -> dict[str, torch.Tensor]:
    scores = second_order_scores(model, data, config.n_batches)
    return top_k(scores, budget(sum(s.numel() for s in scores.values()), config.density))


def apply(model: nn.Module, config: SAMConfig, data: Iterable[Batch] | None = None) -> nn.Module:
    data = data if data is not None else default_data(model, 4 * config.n_batches, batch_size=4)
    attach_deltas(model, sam_mask(model, config, data))
    return model
