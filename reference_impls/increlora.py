"""IncreLoRA: incremental rank allocation, the opposite of AdaLoRA's pruning: ranks grow while training.

Equation:   h = W0 x + ΔW x,   ΔW = (alpha / r_t) * Σ_{i active} e_i b_i a_iᵀ = (alpha / r_t) B diag(E) A
            (a_i a row of A ∈ R^{cap × d_in}, b_i a column of B ∈ R^{d_out × cap}, e_i ∈ R; r_t = active rank)
            module score (the authors' code):  s = Σ |ΔW ⊙ ∂L/∂ΔW| / sqrt(d_out d_in)
                                               Ī ← β1 Ī + (1-β1) s,  Ū ← β2 Ū + (1-β2) |s - Ī|,  S = Ī Ū
            every delta_t steps after t_init, while the total rank is below target_r * n_modules: the top_h
            modules by S get add_r more components.
            advance learning: each module keeps add_r "reserve" components whose a_i, b_i already train with
            e_i fixed at 1e-5; a module that is chosen activates its reserve (e_i becomes trainable, from
            1e-5) and gets add_r fresh reserve components. When the budget is spent, reserves are dropped.
Trainable:  target_r * (d_in + d_out + 1) per targeted module once the budget is spent and `finalize`
            has cut the unused components, exact when all targeted matrices have the same shape (the
            budget is a total rank; where it goes is data-dependent).   (catalog: trainable_params.per_target)
Paper:      "IncreLoRA: Incremental Parameter Allocation Method for Parameter-Efficient Fine-tuning",
            Feiyu Zhang et al., 2023, arXiv 2308.12043.

Follows the authors' code (github.com/FeiyuZhang98/IncreLoRA, loralib/increlora.py) for the score, the
scaling alpha / r_t and the reserve mechanics. Deviations: (1) the authors append new parameters and add
them to the optimizer; _core.train builds its optimizer once, so here every module preallocates `cap`
components (enough for the whole budget to land on one module) and a status buffer marks each one
unallocated (contributes 0, gets a zero gradient, so Adam leaves it untouched), reserve or active;
`finalize(model)` then cuts each module down to its active components. (2) The restarted learning-rate
warm-up after each addition is a scheduler matter and is not reproduced (_core.train uses a constant lr).
(3) AdaLoRA's orthogonality regulariser, which the authors' trainer inherits, is not added. Init: A, B ~
N(0, 0.02²), E = 0: the model starts equal to the base model up to the reserves' 1e-5 contribution.
Mergeable: merge() folds ΔW into W0.

Checked against: the paper's method section (the SVD-like form B diag(E) A with a per-module scaling, the
module importance score, incremental allocation, advance learning, restart warm-up); the authors' code
github.com/FeiyuZhang98/IncreLoRA @51a2d734 (loralib/loralib/increlora.py: ΔW = B diag(E) A * alpha /
(ranknum + 1e-5); backward_hook's score Σ |ΔW ⊙ ∂L/∂ΔW| / sqrt(numel); A, B ~ N(0, 0.02²), E = 0;
new reserve e = 1e-5 under advance learning). peft has no IncreLoRA. The 1e-5 in the divisor is dropped.
Numeric pins: test_increlora.py re-computes the score and (alpha / r_t) Σ e_i b_i a_iᵀ by hand.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._core import AdditiveUpdate, find_targets, freeze_base, linear_dims, replace_module

UNALLOCATED, RESERVE, ACTIVE = 0, 1, 2
RESERVE_E = 1e-5  # the fixed e_i of a reserve component (authors' value)


@dataclass
class IncreLoRAConfig:
    target_r: int = 8                 # average rank per adapted matrix once the budget is spent
    target_modules: tuple[str, ...] = ("q", "k", "v", "o", "up", "down")  # every weight matrix
    init_r: int = 2                   # rank every module starts with (peftkb default)
    add_r: int = 4                    # components added to a chosen module (authors: 4 for target_r 8)
    top_h: int = 2                    # modules chosen at each allocation (peftkb default)
    alpha: float = 16                 # ΔW is scaled by alpha / r_t, r_t the module's current rank
    beta1: float = 0.85               # EMA coefficient of the score (as AdaLoRA)
    beta2: float = 0.85               # EMA coefficient of its uncertainty
    t_init: int = 0                   # warm-up steps before the first allocation
    delta_t: int = 10                 # allocate every delta_t steps
    advance_learn: bool = True        # train reserve components before they are activated


class IncreLoRALinear(AdditiveUpdate):
    def __init__(self, base: nn.Module, init_r: int, cap: int, add_r: int, alpha: float,
                 advance_learn: bool) -> None:
        super().__init__()
        d_in, d_out = linear_dims(base)
        self.base = base
        self.alpha = alpha
        self.A = nn.Parameter(torch.randn(cap, d_in) * 0.02)   # (cap, d_in), rows a_i
        self.B = nn.Parameter(torch.randn(d_out, cap) * 0.02)  # (d_out, cap), columns b_i
        # zero init: e_i = 0 for the active components, so ΔW starts at (almost, see reserves) zero
        self.E = nn.Parameter(torch.zeros(cap))                 # (cap,), e_i
        status = torch.full((cap,), UNALLOCATED)
        status[:init_r] = ACTIVE
        if advance_learn:
            status[init_r:init_r + add_r] = RESERVE
        self.register_buffer("status", status)                  # (cap,), per component
        self.score: float = 0.0                                 # s of the latest backward pass
        self.merged = False

    @property
    def rank(self) -> int:
        return int((self.status == ACTIVE).sum())

    def E_eff(self) -> torch.Tensor:
        """e_i for active components, 1e-5 (no gradient) for reserves, 0 for unallocated: (cap,)."""
        fixed = torch.where(self.status == RESERVE, RESERVE_E, 0.0).to(self.E)
        return torch.where(self.status == ACTIVE, self.E, fixed)

    def delta_weight(self) -> torch.Tensor:
        return (self.alpha / max(self.rank, 1)) * (self.B * self.E_eff()) @ self.A  # (d_out, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)  # (B, T, d_out)
        if self.merged:
            return h
        dW = self.delta_weight()  # (d_out, d_in), formed explicitly: the score needs ∂L/∂ΔW
        if dW.requires_grad:
            dW.register_hook(self._record_score)
        return h + x @ dW.T

    def _record_score(self, grad: torch.Tensor) -> None:
        with torch.no_grad():
            dW = self.delta_weight()
            self.score = float((dW * grad).abs().sum() / math.sqrt(dW.numel()))

    @torch.no_grad()
    def grow(self, n: int, keep_reserve: bool) -> None:
        """Activate n components (the reserve first, at e = 1e-5) and set aside the next reserve."""
        reserve = (self.status == RESERVE).nonzero().flatten().tolist()
        free = (self.status == UNALLOCATED).nonzero().flatten().tolist()
        new = (reserve + free)[:n]
        if len(new) < n:
            raise RuntimeError("IncreLoRA module out of preallocated components")
        # an activated reserve keeps the e = 1e-5 it had as a reserve; a fresh component (no advance
        # learning) starts at e = 0, as in the authors' code
        self.E[new] = torch.tensor([RESERVE_E if i in reserve else 0.0 for i in new]).to(self.E)
        self.status[new] = ACTIVE
        self.status[self.status == RESERVE] = UNALLOCATED
        if keep_reserve:
            free = (self.status == UNALLOCATED).nonzero().flatten()[:len(reserve)]
            self.status[free] = RESERVE

    @torch.no_grad()
    def drop_reserve(self) -> None:
        self.status[self.status == RESERVE] = UNALLOCATED


def increlora_layers(model: nn.Module) -> list[IncreLoRALinear]:
    return [m for m in model.modules() if isinstance(m, IncreLoRALinear)]


class RankIncreaser:
    """Scores modules and adds rank until target_r * n components are active; call step(t) after every
    optimizer step."""

    def __init__(self, model: nn.Module, config: IncreLoRAConfig) -> None:
        self.layers = increlora_layers(model)
        self.c = config
        self.target_total = config.target_r * len(self.layers)
        self.I_bar = [0.0] * len(self.layers)
        self.U_bar = [0.0] * len(self.layers)

    def total_rank(self) -> int:
        return sum(m.rank for m in self.layers)

    def scores(self) -> list[float]:
        return [i * u for i, u in zip(self.I_bar, self.U_bar)]

    def update_scores(self) -> None:
        c = self.c
        for j, m in enumerate(self.layers):
            self.I_bar[j] = c.beta1 * self.I_bar[j] + (1 - c.beta1) * m.score
            self.U_bar[j] = c.beta2 * self.U_bar[j] + (1 - c.beta2) * abs(m.score - self.I_bar[j])

    def allocate(self) -> None:
        """Give add_r components to each of the top_h modules by score, without passing the budget."""
        order = sorted(range(len(self.layers)), key=lambda j: -self.scores()[j])
        for j in order[:self.c.top_h]:
            remaining = self.target_total - self.total_rank()
            if remaining <= 0:
                break
            n = min(self.c.add_r, remaining)
            self.layers[j].grow(n, keep_reserve=self.c.advance_learn and remaining > n)
        if self.total_rank() >= self.target_total:
            for m in self.layers:
                m.drop_reserve()

    def step(self, step: int) -> None:
        if self.total_rank() >= self.target_total:
            return
        self.update_scores()
        if step > self.c.t_init and step % self.c.delta_t == 0:
            self.allocate()


def training_hooks(model: nn.Module, config: IncreLoRAConfig) -> dict:
    """`after_step` for _core.train: score tracking and rank increase."""
    return {"after_step": RankIncreaser(model, config).step}


@torch.no_grad()
def finalize(model: nn.Module) -> nn.Module:
    """Cut every module down to its active components (after training; the trainable count shrinks to
    Σ r_i (d_in + d_out + 1))."""
    for m in increlora_layers(model):
        keep = (m.status == ACTIVE).nonzero().flatten()
        m.A = nn.Parameter(m.A[keep].clone())       # (r_i, d_in)
        m.B = nn.Parameter(m.B[:, keep].clone())    # (d_out, r_i)
        m.E = nn.Parameter(m.E[keep].clone())       # (r_i,)
        m.status = m.status[keep].clone()
    return model


def apply(model: nn.Module, config: IncreLoRAConfig) -> nn.Module:
    freeze_base(model)
    targets = find_targets(model, config.target_modules)
    # enough components for the whole budget increase to land on one module, plus its reserve
    cap = config.target_r * len(targets) - config.init_r * (len(targets) - 1) + config.add_r
    for t in targets:
        replace_module(model, t.name, IncreLoRALinear(t.module, config.init_r, cap, config.add_r, config.alpha,
                                                      config.advance_learn))
    return model
