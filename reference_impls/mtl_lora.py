"""MTL-LoRA: LoRA for multi-task learning with a task-specific transform in the shared low-rank space.

Equation:   for an input x of task t:
              h = W0 x + (alpha / r) * Σ_i p_{t,i} B^i Λ_t A dropout(x),    p_t = softmax(w_t / τ)
            A ∈ R^{r × d_in} shared by all tasks, B^1..B^n ∈ R^{d_out × r} shared up-projections (n =
            n_up_projection), Λ_t = diag(λ_t) ∈ R^{r × r} and w_t ∈ R^n per task, τ = weights_sharpness.
Trainable:  r * d_in + n_up_projection * r * d_out + n_tasks * (r + n_up_projection) per targeted module
                                                             (catalog: trainable_params.per_target)
Paper:      "MTL-LoRA: Low-Rank Adaptation for Multi-Task Learning", Yaming Yang et al., 2024 (AAAI 2025),
            arXiv 2410.09437.

Initialisation (AdapterHub's): A Kaiming-uniform, every B^i = 0 (so the model starts as the base model),
λ_t = 1 (Λ_t = I) and w_t = 1 (equal mixing weights).

Tasks: every example of a batch belongs to one task. `set_tasks(model, task_ids)` gives the task of each
example (a (batch,) tensor of ints in [0, n_tasks)) for the following forward passes; with none set,
example b is taken to belong to task b mod n_tasks, a stand-in for a mixed multi-task batch that keeps every
task's parameters in the graph (the synthetic tasks of `peftkb run` and the tests carry no task labels).
For one fixed task the update is the constant matrix (alpha / r) Σ_i p_{t,i} B^i Λ_t A, so
`merge_task(model, t)` folds it into W for serving that task; the generic merge() is not offered, since a
multi-task model cannot hold every task's update in one W.

Checked against: the paper §3 (Eq. for h_t with the task-specific Λ_t between A and the weighted sum of
the n up-projections, softmax weights with temperature τ); AdapterHub adapters @ 88f18eb
src/adapters/methods/lora.py MTLLoRA (lora_B of shape (n_up_projection, d_out, r) zero-initialised,
TaskSpecificSingularValue: diag of ones, weights ones, apply_weights = Σ exp(w/τ) h_i / Σ exp(w/τ), then
scaling alpha / r) and adapter_config.py MTLLoRAConfig (weights_sharpness 0.05, n_up_projection 1 by
default, "singular_values"). peft 0.21 has no MTL-LoRA. Numeric pin: test_mtl_lora.py recomputes each
example's update from the equation with its own task's Λ_t and softmax weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import Wrapper, freeze_base, kaiming_uniform_, linear_dims, linear_weight, replace_modules


@dataclass
class MTLLoRAConfig:
    r: int = 8                        # rank of the shared low-rank space
    alpha: float = 16                 # the update is scaled by alpha / r
    n_up_projection: int = 3          # n shared up-projections B^i
    n_tasks: int = 2                  # tasks trained together (one λ_t and one w_t each)
    weights_sharpness: float = 0.05   # temperature τ of the softmax over the up-projection weights
    dropout: float = 0.0              # dropout on the input of the low-rank branch
    target_modules: tuple[str, ...] = ("q", "v")


class TaskIds:
    """The task of each example of the current batch, shared by every MTL-LoRA layer of a model."""

    def __init__(self, n_tasks: int) -> None:
        self.n_tasks = n_tasks
        self.ids: torch.Tensor | None = None

    def for_batch(self, batch_size: int, device: torch.device) -> torch.Tensor:  # (B,)
        if self.ids is None:
            return torch.arange(batch_size, device=device) % self.n_tasks  # round-robin stand-in
        if self.ids.shape != (batch_size,):
            raise ValueError(f"set_tasks gave {tuple(self.ids.shape)} task ids for a batch of {batch_size}")
        return self.ids.to(device)


class MTLLoRALinear(Wrapper):
    def __init__(self, base: nn.Module, config: MTLLoRAConfig, tasks: TaskIds) -> None:
        super().__init__()
        d_in, d_out = linear_dims(base)
        r, n = config.r, config.n_up_projection
        self.base, self.tasks = base, tasks
        self.scaling, self.tau = config.alpha / r, config.weights_sharpness
        self.A = nn.Parameter(kaiming_uniform_(torch.empty(r, d_in)))                # (r, d_in), shared
        # zero init: every B^i = 0, so the update is 0 and the model starts as the base model
        self.B = nn.Parameter(torch.zeros(n, d_out, r))                              # (n, d_out, r), shared
        self.lam = nn.Parameter(torch.ones(config.n_tasks, r))                       # (n_tasks, r): diag of Λ_t
        self.w = nn.Parameter(torch.ones(config.n_tasks, n))                         # (n_tasks, n)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.merged_task: int | None = None

    def mixed_B(self, task: torch.Tensor) -> torch.Tensor:
        """Σ_i p_{t,i} B^i for each task in `task` (shape (k,)): (k, d_out, r)."""
        p = torch.softmax(self.w[task] / self.tau, dim=-1)  # (k, n)
        return torch.einsum("kn,nor->kor", p, self.B)

    def delta_weight(self, t: int) -> torch.Tensor:  # (d_out, d_in) for task t
        task = torch.tensor([t], device=self.A.device)
        return self.scaling * (self.mixed_B(task)[0] * self.lam[t]) @ self.A  # B_t Λ_t A

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)  # (B, T, d_out)
        if self.merged_task is not None:
            return h
        task = self.tasks.for_batch(x.shape[0], x.device)  # (B,)
        z = F.linear(self.dropout(x), self.A) * self.lam[task][:, None, :]  # (B, T, r): Λ_t A x
        up = self.mixed_B(task)  # (B, d_out, r)
        return h + self.scaling * torch.einsum("btr,bor->bto", z, up)  # (B, T, d_out)


def layers(model: nn.Module) -> list[MTLLoRALinear]:
    return [m for m in model.modules() if isinstance(m, MTLLoRALinear)]


def set_tasks(model: nn.Module, task_ids: torch.Tensor | None) -> None:
    """Set the task of each example for the next forward passes (None: the round-robin stand-in)."""
    found = layers(model)
    n_tasks = found[0].tasks.n_tasks
    if task_ids is not None and (task_ids.dim() != 1 or task_ids.min() < 0 or task_ids.max() >= n_tasks):
        raise ValueError(f"task ids must be a 1-D tensor of ints in [0, {n_tasks})")
    found[0].tasks.ids = task_ids


@torch.no_grad()
def merge_task(model: nn.Module, t: int) -> nn.Module:
    """Fold task t's update into every adapted W (the model then serves task t only)."""
    for m in layers(model):
        if m.merged_task is None:
            linear_weight(m.base).add_(m.delta_weight(t))
            m.merged_task = t
    return model


@torch.no_grad()
def unmerge_task(model: nn.Module) -> nn.Module:
    for m in layers(model):
        if m.merged_task is not None:
            linear_weight(m.base).sub_(m.delta_weight(m.merged_task))
            m.merged_task = None
    return model


def apply(model: nn.Module, config: MTLLoRAConfig) -> nn.Module:
    freeze_base(model)
    tasks = TaskIds(config.n_tasks)
    replace_modules(model, config.target_modules, lambda t: MTLLoRALinear(t.module, config, tasks))
    return model
