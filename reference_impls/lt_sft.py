"""LT-SFT: Lottery-Ticket Sparse Fine-Tuning (composable sparse fine-tuning).

Equation:   phase 1 (full FT):  θ1 = argmin L(θ) + λ_full · ||θ - θ0||_1 / n,   from θ0, all n parameters free
            mask:               M = 1[i among the K largest |θ1,i - θ0,i|],   K = n_params * density // 1
            phase 2 (sparse):   reset to θ0, then θ = θ0 + M ⊙ φ,   min_φ L(θ) + λ_sparse · ||M ⊙ φ||_1 / n
            the result is the sparse difference φ (K non-zeros), added to θ0; differences compose by addition
Trainable:  n_params * density // 1 in phase 2 (catalog: trainable_params.total), exactly; phase 1 trains
            all n_params
Paper:      "Composable Sparse Fine-Tuning for Cross-Lingual Transfer", Alan Ansell, Edoardo Ponti,
            Anna Korhonen, Ivan Vulić, 2022 (ACL 2022), arXiv 2110.07560.

apply() runs phase 1 on a copy of the model (full_ft_steps Adam steps over `data`, cycling through it),
picks the K entries, and returns the original model, untouched (θ0, the paper's reset), with a sparse
delta φ on those K entries (reference_impls/_partial.py); phase 2 is ordinary training of that model with
`training_hooks` adding the L1 pull. L1 terms are normalised by the number of parameters, as the authors'
composable-sft library does (the coefficient 0.1 of its example script, in both phases, is the default
here). Task data: pass `data` to apply(); without it the built-in synthetic task is used
(tests only). The paper's phase lengths are set in epochs per experiment; here steps.

Checked against: the authors' library github.com/cambridgeltl/composable-sft @29f7872d: src/sft/trainer.py
training_step (reg_loss = l1_reg * Σ |p - θ0| / _num_params, _num_params = every parameter of the model,
sparse_l1_reg in the masked phase, full_l1_reg otherwise), src/sft/lt_sft.py (after full fine-tuning,
threshold = the K-th largest |θ1 - θ0| over the maskable parameters, mask |Δ| >= threshold, parameters
reset to θ0 before sparse fine-tuning), src/sft/sft_args.py (both coefficients default to 0.0 there;
examples/language-modeling/train_mlm.sh passes 0.1). The paper's abstract was read, not its method
section. Simplifications: exactly K entries (the library's >= threshold may keep ties beyond K); one
iteration (the library's n_ft_iterations may repeat the two phases, growing the mask).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from reference_impls._partial import Batch, attach_deltas, base_parameters, budget, deltas, default_data, top_k


@dataclass
class LTSFTConfig:
    density: float = 0.05          # K / n_params, share of entries kept free in phase 2
    full_ft_steps: int = 100       # length of phase 1 (full fine-tuning), in optimizer steps
    full_ft_lr: float = 1e-4       # Adam learning rate of phase 1
    full_l1_reg: float = 0.1       # λ_full, L1 pull towards θ0 in phase 1 (per parameter)
    sparse_l1_reg: float = 0.1     # λ_sparse, L1 pull towards θ0 in phase 2 (per parameter)


def full_fine_tune(model: nn.Module, config: LTSFTConfig, data: list[Batch]) -> dict[str, torch.Tensor]:
    """Phase 1 on a copy: θ1 for every parameter name (the model itself is not changed)."""
    tuned = copy.deepcopy(model)
    params = base_parameters(tuned)
    theta0 = {n: p.detach().clone() for n, p in params.items()}
    for p in params.values():
        p.requires_grad_(True)
    n = sum(p.numel() for p in params.values())
    opt = torch.optim.Adam(list(params.values()), lr=config.full_ft_lr)
    tuned.train()
    for step in range(config.full_ft_steps):
        loss = tuned(**data[step % len(data)]).loss
        if config.full_l1_reg:
            loss = loss + config.full_l1_reg * sum((p - theta0[k]).abs().sum() for k, p in params.items()) / n
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {k: p.detach() for k, p in params.items()}


def lottery_ticket_mask(theta0: dict[str, torch.Tensor], theta1: dict[str, torch.Tensor],
                        density: float) -> dict[str, torch.Tensor]:
    """The K entries that moved most in phase 1: name -> flat positions."""
    movement = {n: (theta1[n] - theta0[n]).abs() for n in theta0}
    return top_k(movement, budget(sum(m.numel() for m in movement.values()), density))


def apply(model: nn.Module, config: LTSFTConfig, data: Iterable[Batch] | None = None) -> nn.Module:
    data = list(data) if data is not None else default_data(model, 16)
    theta0 = {n: p.detach().clone() for n, p in base_parameters(model).items()}
    theta1 = full_fine_tune(model, config, data)
    attach_deltas(model, lottery_ticket_mask(theta0, theta1, config.density))  # φ = 0: reset to θ0
    return model


def training_hooks(model: nn.Module, config: LTSFTConfig) -> dict:
    """Phase 2's L1 pull of the sparse difference towards the pretrained values."""
    phis = [d.values for d in deltas(model)]
    n = sum(p.numel() for p in model.parameters() if not p.requires_grad)  # n_params: the frozen θ0

    def l1() -> torch.Tensor:
        return config.sparse_l1_reg * sum(phi.abs().sum() for phi in phis) / n

    return {"extra_loss": l1}
