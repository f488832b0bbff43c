"""MOELoRA: a mixture of LoRA experts per layer, mixed by a gate that sees only the task.

Equation:   h = W0 x + (alpha / r) Σ_{i=1..N} ω_{t,i} B_i A_i x,   A_i ∈ R^{r/N × d_in},  B_i ∈ R^{d_out × r/N}
            ω_t = Softmax(W_T e_t),   e_t = E[t] ∈ R^{d_T} (task embedding),  W_T ∈ R^{N × d_T}
            (N = n_experts, t the example's task id, d_T = task_dim; every layer has its own E and W_T)
            for a fixed task t the update is one matrix, ΔW_t = (alpha / r) Σ_i ω_{t,i} B_i A_i: mergeable per task
Trainable:  r * (d_in + d_out) + task_dim * (n_tasks + n_experts) per targeted module
            (the experts' factors together are one rank-r LoRA; plus E and W_T)   (catalog: per_target)
Paper:      "MOELoRA: An MOE-based Parameter Efficient Fine-Tuning Method for Multi-task Medical
            Applications", Qidong Liu et al., 2023, arXiv 2310.18339.

The layout follows the authors' code (MOELoRA-peft: per layer an nn.Embedding of tasks, a bias-free
Linear gate with softmax, experts of rank r // N); the authors' embedding has one spare row (task_num + 1),
left out here. Task ids are set on the model with `set_task(model, t)` (an int for the whole batch or a
(B,) tensor, one per example) instead of being passed through the HF forward; the default is task 0.
Init: A_i ~ N(0, 0.01²) and B_i = 0 (the authors' reset_lora_parameters), so the model starts equal to
the base model; E ~ N(0, 1)
(nn.Embedding's default) and W_T as nn.Linear's default, so the initial gate already differs between tasks.
merge() folds the mixture of the task currently set (which must be one task for the whole batch).

Checked against: the authors' code github.com/liuqidong07/MOELoRA-peft @2d9efa4e,
src/MLoRA/peft/tuners/mmoelora.py (MMOELoraLinear.forward: result += B_i(A_i(x)) * scaling *
expert_weight[..., i] summed over experts, scaling = lora_alpha / r with r the total rank; MMOELinearA/B
split r into expert_num experts of rank r // expert_num, bias-free; Gate = bias-free Linear then
Softmax; nn.Embedding(task_num + 1, te_dim) per layer; A ~ N(0, 0.01²), B = 0). The paper's abstract
was read, not its method section. Simplifications: no spare embedding row; no LoRA dropout.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import AdditiveUpdate, freeze_base, linear_dims, replace_modules


@dataclass
class MOELoRAConfig:
    r: int = 16                                   # total rank, shared out evenly among the experts
    n_experts: int = 8                            # N: LoRA experts per adapted layer
    n_tasks: int = 16                             # tasks the gate can be conditioned on (rows of E)
    task_dim: int = 64                            # d_T: task embedding width
    alpha: float = 32                             # the update is scaled by alpha / r
    target_modules: tuple[str, ...] = ("q", "v")  # roles or module-name suffixes (LoRA's placement)


class MOELoRALinear(AdditiveUpdate):
    def __init__(self, base: nn.Module, config: MOELoRAConfig) -> None:
        super().__init__()
        if config.r % config.n_experts:
            raise ValueError(f"r = {config.r} must be a multiple of n_experts = {config.n_experts}")
        d_in, d_out = linear_dims(base)
        N, r_e = config.n_experts, config.r // config.n_experts
        self.base = base
        self.scaling = config.alpha / config.r
        # the authors' init of every expert's A: N(0, 0.01²)
        self.A = nn.Parameter(torch.randn(N, r_e, d_in) * 0.01)                 # (N, r/N, d_in)
        # zero init: every B_i A_i = 0, so the wrapped layer starts identical to the base layer
        self.B = nn.Parameter(torch.zeros(N, d_out, r_e))                       # (N, d_out, r/N)
        self.E = nn.Embedding(config.n_tasks, config.task_dim)                  # (n_tasks, d_T), task embeddings
        self.W_T = nn.Linear(config.task_dim, N, bias=False)                    # (N, d_T), the gate
        self.task: int | torch.Tensor = 0                                       # set by set_task()
        self.merged = False

    def gate(self, task: int | torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(task, device=self.A.device)
        return F.softmax(self.W_T(self.E(t)), dim=-1)  # (N,) for one task, (B, N) for one per example

    def delta_weight(self) -> torch.Tensor:
        if torch.as_tensor(self.task).dim():
            raise ValueError("merge needs one task for the whole batch (set_task(model, t) with an int)")
        w = self.gate(self.task)                                                # (N,)
        return self.scaling * torch.einsum("n,nor,nri->oi", w, self.B, self.A)  # (d_out, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)  # (B, T, d_out)
        if self.merged:
            return h
        z = torch.einsum("bti,nri->btnr", x, self.A)          # A_i x: (B, T, N, r/N)
        y = torch.einsum("btnr,nor->btno", z, self.B)         # B_i A_i x: (B, T, N, d_out)
        w = self.gate(self.task)                              # (N,) or (B, N)
        w = w[:, None, :, None] if w.dim() == 2 else w[:, None]  # (B, 1, N, 1) or (N, 1)
        return h + self.scaling * (y * w).sum(-2)             # (B, T, d_out)


def set_task(model: nn.Module, task: int | torch.Tensor) -> None:
    """Condition every MOELoRA layer on task `task` (an int, or a (B,) tensor of per-example ids)."""
    for m in model.modules():
        if isinstance(m, MOELoRALinear):
            if m.merged:
                raise RuntimeError("unmerge before switching tasks: the merged weights hold one task's mixture")
            m.task = task


def apply(model: nn.Module, config: MOELoRAConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules, lambda t: MOELoRALinear(t.module, config))
    return model

