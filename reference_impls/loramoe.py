"""LoRAMoE: several LoRA experts per feed-forward projection, mixed token by token by a softmax router.

Equation:   h = W0 x + (alpha / r) Σ_{i=1..n_experts} g_i(x) B_i A_i dropout(x),   g(x) = softmax(W_g x) ∈ R^{n_experts},
            A_i ∈ R^{r × d_in}, B_i ∈ R^{d_out × r}, W_g ∈ R^{n_experts × d_in} (no bias); every expert is used (dense).
            Localised balancing constraint (training, per adapted module, when examples carry a type):
              Q[m, i] = Σ_tokens g_i(x_t^m)       (importance of expert i for example m)
              I[m, i] = 1 + δ  if expert i is in the half of the experts that example m's type is assigned to, else 1 − δ
              L_lbc = β · Var(Z) / (Mean(Z)² + 1e-10),   Z = I ⊙ Q (all entries; unbiased variance)
            examples of type 1 are assigned the first n_experts / 2 experts, examples of type 0 the second half.
Trainable:  n_experts * r * (d_in + d_out) + n_experts * d_in   per targeted module   (catalog: trainable_params.per_target)
Paper:      "LoRAMoE: Alleviating World Knowledge Forgetting in Large Language Models via MoE-Style Plugin",
            Shihan Dou et al., 2024 (ACL 2024), arXiv 2312.09979.

The constraint splits the experts into two groups, one pushed towards the examples that need the model's
world knowledge and one towards the downstream tasks, while balancing the load within each group. Example
types go in with the batch: `model(**batch, task_types=types)` with types of shape (B,) in {0, 1}; a
forward pre-hook takes them out before the model sees them. Without types (or with blc_weight = 0, the
authors' released setting) there is no constraint. `training_hooks` adds the modules' constraint terms
to the loss (`balance_loss`).

Initialisation (the authors'): A_i and W_g Kaiming-uniform, B_i = 0, so the model starts as the base model.
Not mergeable: the router's weights depend on the token, so the experts cannot be folded into W0.

Checked against: the authors' code, Ablustrund/LoRAMoE @ a2470ef, `peft/tuners/lora.py` (lora_route
Linear(d_in, n, bias=False), lora_A{i} / lora_B{i}, the dense float32 softmax, scaling alpha / r,
cv_squared of the type-weighted importance, the halves assignment) and `run_loramoe.sh` (rank 4, alpha 32,
8 experts, dropout 0.05, gate/up/down projections, blc_alpha = blc_weight = 0); the paper (the MoE-style
plugin, the localised balancing constraint with its importance and coefficient matrices). There is no peft
implementation; tests/reference_impls/test_loramoe.py pins the mixture and the constraint numerically.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import Wrapper, freeze_base, kaiming_uniform_, linear_dims, replace_modules


@dataclass
class LoRAMoEConfig:
    n_experts: int = 8                  # LoRA experts per adapted projection
    r: int = 4                          # rank of each expert
    alpha: float = 32                   # each expert's update is scaled by alpha / r
    dropout: float = 0.05               # dropout on the experts' input (the authors' script)
    blc_alpha: float = 0.0              # δ of the coefficient matrix (the authors' script: 0)
    blc_weight: float = 0.0             # β, the constraint's weight in the loss (the authors' script: 0)
    target_modules: tuple[str, ...] = ("gate", "up", "down")


class TaskTypes:
    """Forward pre-hook on the model: takes `task_types` out of its keyword arguments for the layers."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None  # (B,) in {0, 1}

    def __call__(self, model: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        self.value = kwargs.pop("task_types", None)
        return args, kwargs


def cv_squared(z: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation of all entries: Var(z) / (Mean(z)² + 1e-10)."""
    z = z.float().flatten()
    return z.var() / (z.mean() ** 2 + 1e-10)


class LoRAMoELinear(Wrapper):
    def __init__(self, base: nn.Module, types: TaskTypes, config: LoRAMoEConfig) -> None:
        super().__init__()
        d_in, d_out = linear_dims(base)
        n, r = config.n_experts, config.r
        if config.blc_weight and n % 2:
            raise ValueError(f"the balancing constraint splits the experts in two halves: n_experts ({n}) must be even")
        self.base, self.types, self.scale = base, types, config.alpha / r
        self.delta, self.beta = config.blc_alpha, config.blc_weight
        self.dropout = nn.Dropout(config.dropout)
        self.router = nn.Parameter(kaiming_uniform_(torch.empty(n, d_in)))  # (n, d_in), W_g
        self.A = nn.Parameter(torch.stack([kaiming_uniform_(torch.empty(r, d_in)) for _ in range(n)]))  # (n, r, d_in)
        self.B = nn.Parameter(torch.zeros(n, d_out, r))  # (n, d_out, r), zero: the update starts at 0
        self.lbc: torch.Tensor | None = None  # the constraint term of the last forward pass

    def gates(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d_in) -> (B, T, n)
        return F.softmax(x @ self.router.T, dim=-1, dtype=torch.float32).to(x.dtype)

    def balance(self, g: torch.Tensor, task_types: torch.Tensor) -> torch.Tensor:
        """β · cv²(I ⊙ Q) for gates g (B, T, n) and example types (B,)."""
        n = g.shape[-1]
        Q = g.sum(dim=1)  # (B, n): importance of each expert for each example
        first = (task_types.view(-1, 1) == 1).expand(-1, n // 2)   # type 1: the first half
        second = (task_types.view(-1, 1) == 0).expand(-1, n // 2)  # type 0: the second half
        I = torch.where(torch.cat([first, second], dim=1), 1.0 + self.delta, 1.0 - self.delta)  # (B, n)
        return self.beta * cv_squared(I * Q)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)  # (B, T, d_out)
        g = self.gates(x)  # (B, T, n)
        u = torch.einsum("btd,nrd->btnr", self.dropout(x), self.A)  # (B, T, n, r)
        experts = torch.einsum("btnr,nor->btno", u, self.B)  # (B, T, n, d_out)
        if self.types.value is not None and self.beta:
            self.lbc = self.balance(g, self.types.value.to(x.device))
        else:
            self.lbc = None
        return h + self.scale * torch.einsum("btn,btno->bto", g, experts)


def balance_loss(model: nn.Module) -> torch.Tensor:
    """Σ over the adapted modules of the constraint terms of the last forward pass (0 without types)."""
    terms = [m.lbc for m in model.modules() if isinstance(m, LoRAMoELinear) and m.lbc is not None]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def training_hooks(model: nn.Module, config: LoRAMoEConfig) -> dict[str, Callable[..., Any]]:
    return {"extra_loss": lambda: balance_loss(model)}


def apply(model: nn.Module, config: LoRAMoEConfig) -> nn.Module:
    freeze_base(model)
    types = TaskTypes()
    replace_modules(model, config.target_modules,
                    lambda t: LoRAMoELinear(t.module, types, config).train(t.module.training))
    model.register_forward_pre_hook(types, with_kwargs=True)
    return model
