"""AdaLoRA: Adaptive Budget Allocation, an SVD-shaped low-rank update whose rank is pruned while training.

Equation:   h = W0 x + (alpha / init_r) * P Λ Q x,   P ∈ R^{d_out × r}, Λ = diag(λ_1..λ_r), Q ∈ R^{r × d_in}
            importance of one entry w:   I = |w · ∂L/∂w|,   Ī ← β1 Ī + (1-β1) I,   Ū ← β2 Ū + (1-β2) |I - Ī|,
                                         s(w) = Ī · Ū
            importance of triplet i:     S_i = s(λ_i) + mean_j s(P_ji) + mean_j s(Q_ij)
            budget b(t): init_r·n for t < t_init, then cubic decay to target_r·n, fixed for the last t_final
            steps; every delta_t steps the λ_i outside the top-b(t) S_i (over all matrices) are set to 0.
            regulariser: R = mean over matrices of ||PᵀP - I||_F and ||QQᵀ - I||_F, weighted by orth_reg_weight
Trainable:  init_r * (d_in + d_out + 1) per targeted module   (catalog: trainable_params.per_target)
Paper:      "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning", Qingru Zhang et al., 2023
            (ICLR 2023), arXiv 2303.10512.

Follows the authors' code (and peft) where it differs from the paper's text: the regulariser averages
unsquared Frobenius norms (the paper sums squared ones), the update is scaled by alpha / init_r (peft
divides by init_r + 1e-5), and the schedule uses peft's step conventions (warm-up while t <= t_init) and
defaults (no warm-up, no final phase, prune every step). Init: P, Q ~ N(0, 0.02²), Λ = 0, so the update starts at zero and the model equals the base
model. Pruning zeroes λ_i but keeps the tensors, so the trainable count does not change. Mergeable like
LoRA. Training needs `training_hooks(model, config)`: the regulariser and the rank allocator.

Checked against: the paper §3.1 (ΔW = P Λ Q and the orthogonality regulariser), §3.2 (sensitivity, its
EMA smoothing and uncertainty, the triplet score) and §3.3 (the cubic budget schedule);
the authors' code github.com/QingruZhang/AdaLoRA @d10f5ebe (loralib/loralib/adalora.py: SVDLinear with
P, Q ~ N(0, 0.02²), E = 0 and scaling alpha / (ranknum + 1e-5); RankAllocator's kthvalue threshold and
masked_fill of λ; compute_orth_regu = regu_weight * Σ ||·||_F / n, unsquared); peft 0.21.2
`peft/tuners/adalora/layer.py` and `model.py` (the oracle tests compare counts, outputs, the budget
schedule and the pruned ranks with AdaLoraModel). As in both, the mask keeps S_i above the n_drop-th
smallest score. Numeric pins: test_adalora.py re-computes P Λ Q * alpha / init_r, the weighted regulariser
that training adds to the loss, and the EMA importance product.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._core import AdditiveUpdate, freeze_base, linear_dims, replace_modules


@dataclass
class AdaLoRAConfig:
    init_r: int = 12                  # initial rank of every adapted matrix
    target_r: int = 8                 # average rank kept after budget allocation
    alpha: float = 16                 # the update is scaled by alpha / init_r (the authors' scripts: 16)
    beta1: float = 0.85               # EMA coefficient of the importance (sensitivity)
    beta2: float = 0.85               # EMA coefficient of its uncertainty
    orth_reg_weight: float = 0.5      # weight of the orthogonality regulariser on P and Q
    target_modules: tuple[str, ...] = ("q", "k", "v", "o", "up", "down")  # the paper adapts every matrix
    dropout: float = 0.0              # dropout on the input of the low-rank branch
    total_steps: int = 1000           # T, length of training (the budget schedule needs it)
    t_init: int = 0                   # warm-up steps before any pruning
    t_final: int = 0                  # final steps with the budget (and masks) fixed
    delta_t: int = 1                  # prune every delta_t steps


class SVDLinear(AdditiveUpdate):
    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        d_in, d_out = linear_dims(base)
        self.base = base
        self.scaling = alpha / r
        self.P = nn.Parameter(torch.randn(d_out, r) * 0.02)  # (d_out, r), left singular vectors
        # zero init: Λ = 0 makes P Λ Q = 0, so the wrapped layer starts identical to the base layer
        self.Lambda = nn.Parameter(torch.zeros(r))            # (r,), singular values
        self.Q = nn.Parameter(torch.randn(r, d_in) * 0.02)    # (r, d_in), right singular vectors
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * (self.P * self.Lambda) @ self.Q  # (d_out, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)
        if self.merged:
            return h
        z = self.dropout(x) @ (self.Q * self.Lambda[:, None]).T  # (B, T, r)
        return h + self.scaling * (z @ self.P.T)  # (B, T, d_out)



def svd_layers(model: nn.Module) -> list[SVDLinear]:
    return [m for m in model.modules() if isinstance(m, SVDLinear)]


def orthogonal_regularization(model: nn.Module) -> torch.Tensor:
    """mean over P and Q matrices of ||PᵀP - I||_F, ||QQᵀ - I||_F (the authors' form)."""
    terms = []
    for m in svd_layers(model):
        I = torch.eye(m.Lambda.shape[0], device=m.P.device, dtype=m.P.dtype)
        terms += [torch.linalg.matrix_norm(m.P.T @ m.P - I), torch.linalg.matrix_norm(m.Q @ m.Q.T - I)]
    return torch.stack(terms).mean()


class RankAllocator:
    """Tracks importance scores and prunes singular values to the budget b(t).

    Call `step(t)` after every optimizer step, while the gradients are still there (as peft's
    update_and_allocate). From t = total_steps - t_final on, the masks stay as they were then.
    """

    def __init__(self, model: nn.Module, config: AdaLoRAConfig) -> None:
        self.layers = svd_layers(model)
        self.c = config
        self.I_bar: dict[nn.Parameter, torch.Tensor] = {}  # Ī, per parameter tensor
        self.U_bar: dict[nn.Parameter, torch.Tensor] = {}  # Ū, per parameter tensor
        self.masks: list[torch.Tensor] | None = None        # kept λ_i per layer, (r,) bool each

    def budget(self, step: int) -> tuple[int, bool]:
        """(b(t), whether to prune at step t): the paper's Eq. 12, with peft's step conventions."""
        c, n = self.c, len(self.layers)
        b0, bT = c.init_r * n, c.target_r * n
        if step <= c.t_init:
            return b0, False
        if step > c.total_steps - c.t_final:
            return bT, True
        progress = (step - c.t_init) / (c.total_steps - c.t_final - c.t_init)
        return int(bT + (b0 - bT) * (1 - progress) ** 3), step % c.delta_t == 0

    @torch.no_grad()
    def update_importance(self) -> None:
        c = self.c
        for m in self.layers:
            for w in (m.P, m.Lambda, m.Q):
                I = (w * w.grad).abs()
                if w not in self.I_bar:
                    self.I_bar[w], self.U_bar[w] = torch.zeros_like(w), torch.zeros_like(w)
                self.I_bar[w] = c.beta1 * self.I_bar[w] + (1 - c.beta1) * I
                self.U_bar[w] = c.beta2 * self.U_bar[w] + (1 - c.beta2) * (I - self.I_bar[w]).abs()

    def triplet_scores(self) -> list[torch.Tensor]:
        """S_i for every layer, each (r,)."""
        s = {w: self.I_bar[w] * self.U_bar[w] for w in self.I_bar}
        return [s[m.Lambda] + s[m.P].mean(0) + s[m.Q].mean(1) for m in self.layers]

    def masks_for_budget(self, b: int) -> list[torch.Tensor]:
        """Keep the b triplets with the highest S_i over all layers."""
        scores = self.triplet_scores()
        n_drop = sum(S.numel() for S in scores) - b
        if n_drop <= 0:
            return [torch.ones_like(S, dtype=torch.bool) for S in scores]
        threshold = torch.cat(scores).kthvalue(n_drop).values
        return [S > threshold for S in scores]

    @torch.no_grad()
    def step(self, step: int) -> None:
        final = self.c.total_steps - self.c.t_final
        if step <= final:
            self.update_importance()
            b, prune = self.budget(step)
            if not (prune or step == final):
                return
            self.masks = self.masks_for_budget(b)
        for m, keep in zip(self.layers, self.masks or []):
            m.Lambda.masked_fill_(~keep, 0.0)  # prune: λ_i = 0; P and Q keep their values


def training_hooks(model: nn.Module, config: AdaLoRAConfig) -> dict:
    """`extra_loss` (the weighted regulariser) and `after_step` (rank allocation) for _core.train."""
    allocator = RankAllocator(model, config)
    return {"extra_loss": lambda: config.orth_reg_weight * orthogonal_regularization(model),
            "after_step": allocator.step}


def apply(model: nn.Module, config: AdaLoRAConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules,
                    lambda t: SVDLinear(t.module, config.init_r, config.alpha, config.dropout))
    return model
