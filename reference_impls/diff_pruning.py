"""Diff Pruning: a task-specific difference vector on frozen pretrained weights, made sparse by an L0 relaxation.

Equation:   θ = θ0 + δ,   δ = z ⊙ w,   w ∈ R^n trained,   z ∈ [0, 1]^n a hard-concrete gate per entry:
                u ~ U(0, 1),  s = σ(log u - log(1 - u) + log α),  z = min(1, max(0, s (r - l) + l))
                (evaluation: s = σ(log α));   l < 0 < 1 < r stretch s so that z hits exactly 0 and 1
            L0 penalty (expected number of non-zeros):  R(α) = Σ_i σ(log α_i - log(-l / r))
            structured: one more gate z_g per group (here: per parameter tensor), δ_i = z_i z_g(i) w_i and
                R = Σ_i σ(log α_i - log(-l/r)) σ(log α_g(i) - log(-l/r))
            loss: L(θ0 + δ) + λ R;  then magnitude pruning: keep the k = n_params * density // 1 entries of
            largest |δ| (over all parameters), and fine-tune those k entries with the mask fixed
Trainable:  n_params * density // 1 after pruning (catalog: trainable_params.total), exactly; while the L0
            phase trains, 2 * n_params (w and log α) plus one group gate per tensor when structured
Paper:      "Parameter-Efficient Transfer Learning with Diff Pruning", Demi Guo, Alexander Rush, Yoon Kim,
            2021 (ACL-IJCNLP 2021), arXiv 2012.07463.

Defaults follow the authors' code: l = -1.5, r = 1.5, log α initialised to 5 (gates open), λ = 1.25e-7
on the summed penalty. w starts at 0, so δ = 0 and the
model starts equal to the base model. Groups for the structured variant are whole parameter tensors.
Use: apply() gives the L0 phase (train with `training_hooks`, which adds λ R); `prune(model, config)`
then replaces every dense delta by a sparse one holding the k kept entries of δ (their values carry over,
the rest go back to θ0), and training continues on those k values. Both states merge: θ0 ← θ0 + δ, with
the deterministic gates.

Checked against: the authors' code github.com/dguo98/DiffPruning @085fa7d9 (examples/backup.py:
concrete_stretched s = σ(log u − log(1−u) + log α), z = clamp(s (r − l) + l, 0, 1); the penalty
Σ σ(log α − log(−l/r)) times sparsity_pen; argparse and README defaults sparsity_pen 1.25e-7,
concrete_lower −1.5, concrete_upper 1.5, alpha_init 5; README: magnitude pruning to target_sparsity
0.005 (run_glue_mag.py) then fixed-mask fine-tuning (run_glue_fixmask_finetune.py)). Differences: the
authors clamp u to [1e-4, 1 − 1e-4] (here 1e-6) and write dz/dlog α out by hand, which is the derivative
autograd takes of the clamped expression here. The paper's text was not re-read in this pass. peft has no Diff
Pruning. Numeric pins: test_diff_pruning.py re-computes the deterministic gate, the expected L0, the
penalty training adds (λ Σ), and the top-k selection.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._partial import (Delta, attach_deltas, base_parameters, budget, freeze_base, register_delta,
                                      remove_delta, top_k)


@dataclass
class DiffPruningConfig:
    density: float = 0.005      # share of parameters whose difference stays non-zero after pruning
    structured: bool = False    # add one gate per parameter tensor, so whole tensors can be dropped
    l0_reg: float = 1.25e-7     # λ, weight of the expected-L0 penalty (summed over entries)
    alpha_init: float = 5.0     # initial log α: σ(5) stretched to [l, r] clamps to z = 1, gates open
    stretch_l: float = -1.5     # l, lower end of the stretched concrete distribution
    stretch_r: float = 1.5      # r, upper end


class DiffDelta(Delta):
    """δ = z ⊙ w (⊙ z_g) with hard-concrete gates z, for one base tensor."""

    def __init__(self, shape: torch.Size, config: DiffPruningConfig, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(shape)
        self.l, self.r = config.stretch_l, config.stretch_r
        # zero init of w: δ = 0, so the model starts equal to the pretrained one
        self.w = nn.Parameter(torch.zeros(shape, dtype=dtype))                          # (shape)
        self.log_alpha = nn.Parameter(torch.full(shape, config.alpha_init, dtype=dtype))  # (shape)
        self.group_log_alpha = (nn.Parameter(torch.tensor(config.alpha_init, dtype=dtype))  # () one per tensor
                                if config.structured else None)

    def gate(self, log_alpha: torch.Tensor, stochastic: bool) -> torch.Tensor:
        if stochastic:
            u = torch.rand_like(log_alpha).clamp(1e-6, 1 - 1e-6)
            s = torch.sigmoid(torch.log(u) - torch.log(1 - u) + log_alpha)
        else:
            s = torch.sigmoid(log_alpha)
        return (s * (self.r - self.l) + self.l).clamp(0, 1)

    def delta(self, stochastic: bool | None = None) -> torch.Tensor:  # (shape)
        stochastic = self.training if stochastic is None else stochastic
        d = self.gate(self.log_alpha, stochastic) * self.w
        if self.group_log_alpha is not None:
            d = d * self.gate(self.group_log_alpha, stochastic)
        return d

    @torch.no_grad()
    def merge(self) -> None:  # always with the deterministic gates
        if not self.merged:
            self._original[0].add_(self.delta(stochastic=False))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self._original[0].sub_(self.delta(stochastic=False))
            self.merged = False

    def expected_l0(self) -> torch.Tensor:
        """Σ_i P(z_i ≠ 0) (times P(z_g ≠ 0) when structured)."""
        shift = math.log(-self.l / self.r)
        p = torch.sigmoid(self.log_alpha - shift)
        if self.group_log_alpha is not None:
            p = p * torch.sigmoid(self.group_log_alpha - shift)
        return p.sum()


def diff_deltas(model: nn.Module) -> list[DiffDelta]:
    return [m for m in model.modules() if isinstance(m, DiffDelta)]


def apply(model: nn.Module, config: DiffPruningConfig) -> nn.Module:
    freeze_base(model)
    for name, p in base_parameters(model).items():
        register_delta(model, name, p, DiffDelta(p.shape, config, p.dtype))
    return model


def training_hooks(model: nn.Module, config: DiffPruningConfig) -> dict:
    """The L0 phase adds λ R(α); after prune() there is no gate left and nothing is added."""
    def l0_penalty() -> torch.Tensor:
        terms = [d.expected_l0() for d in diff_deltas(model)]
        return config.l0_reg * sum(terms) if terms else torch.zeros(())

    return {"extra_loss": l0_penalty}


@torch.no_grad()
def prune(model: nn.Module, config: DiffPruningConfig | None = None) -> nn.Module:
    """Magnitude pruning: keep the k largest |δ| (deterministic gates) over all parameters, as sparse deltas
    that start from those δ values; every other entry returns to θ0."""
    config = config or DiffPruningConfig()
    dense = diff_deltas(model)
    d = {m.param_name: m.delta(stochastic=False).detach().clone() for m in dense}
    params = {m.param_name: m._original[0] for m in dense}
    keep = top_k({n: v.abs() for n, v in d.items()}, budget(sum(v.numel() for v in d.values()), config.density))
    for m in dense:
        remove_delta(model, m)
    sparse = attach_deltas(model, {n: i for n, i in keep.items()})
    for name, s in sparse.items():
        s.values.copy_(d[name].flatten()[s.index])
        assert s._original[0] is params[name]
    return model
