"""Poly (Polytropon) and MHR: an inventory of LoRA skills per layer, mixed per task by a learned routing.

Equation:   h = W0 x + (1 / r) · (x A_t B_t)   for an input of task t, where, per split q of n_splits,
              A_t[q] = Σ_s w_t[q, s] A[q, s],   A[q, s] ∈ R^{(d_in / n_splits) × r}     (A_t stacks its splits: d_in × r)
              B_t[q] = Σ_s w_t[q, s] B[q, s],   B[q, s] ∈ R^{r × (d_out / n_splits)}    (B_t concatenates them: r × d_out)
              w_t[q, s] = σ(Z[t, q, s]) / Σ_s' σ(Z[t, q, s'])   (Z: routing logits, n_tasks × n_splits × n_skills);
            in training σ(Z) is replaced by a relaxed Bernoulli sample σ((Z + log u − log(1 − u)) / τ), u ~ U(0, 1), τ = 1.
Trainable:  n_skills * r * (d_in + d_out) + n_tasks * n_splits * n_skills   per targeted module
            (catalog: trainable_params.per_target)
Papers:     "Combining Parameter-efficient Modules for Task-level Generalisation", Edoardo Maria Ponti et al.,
            2023 (EACL 2023), arXiv 2202.13914 (Poly: n_splits = 1); "Multi-Head Adapter Routing for
            Cross-Task Generalization", Lucas Page-Caccia et al., 2023 (NeurIPS 2023), arXiv 2211.03831 (MHR:
            n_splits > 1, each block of the skills routed on its own).

Task ids. The routing depends on the task only, so every forward pass needs the task of each example:
`model(**batch, task_ids=ids)` with ids of shape (B,). A forward pre-hook on the model takes them out of the
keyword arguments before the model sees them and hands them to every Poly layer. A model with a single task
(n_tasks = 1, the catalog's default) may omit them: every example is task 0. With more tasks, omitting them
is an error.

Initialisation (peft's): each A[q, s] Kaiming-uniform, every B[q, s] = 0, so the update is 0 and the model
starts as the base model; Z ~ U(−1e−3, 1e−3), so the skills start out mixed almost evenly.
Merging: for a fixed task the mixed update ΔW_t = (A_t B_t)ᵀ / r is one constant low-rank matrix, so
`merge(task_id)` folds it into W0 (the default, task 0, is the whole model when n_tasks = 1). A merged
model serves that task only, and refuses task ids of another.

Checked against: the Poly paper (skill inventory, task-skill allocation, relaxed Bernoulli in training,
normalised sigmoids at inference); the MHR paper (per-block routing); peft 0.21.2
`peft/tuners/poly/layer.py` and `router.py` (parameter layouts, 1 / r scaling, EPS = 1e-12 in the
normalisation, the init), whose outputs, gradients and count tests/reference_impls/test_poly.py compares on
tiny Llama, BERT and T5. Unlike peft (nn.Linear only, no merge), this also wraps GPT-2's Conv1D and merges.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._core import Wrapper, freeze_base, kaiming_uniform_, linear_dims, linear_weight, replace_modules

EPS = 1e-12  # keeps the normalisation finite


@dataclass
class PolyConfig:
    r: int = 8                              # rank of each skill's LoRA
    n_tasks: int = 1                        # rows of the routing matrix
    n_skills: int = 4                       # LoRA skills per adapted module
    n_splits: int = 1                       # blocks per skill routed separately (MHR when > 1)
    target_modules: tuple[str, ...] = ("q", "v")


class TaskRouting:
    """Forward pre-hook on the model: takes `task_ids` out of its keyword arguments for the Poly layers.
    An object shared by the layers (copy.deepcopy keeps it shared within the copy)."""

    def __init__(self, n_tasks: int) -> None:
        self.n_tasks = n_tasks
        self.task_ids: torch.Tensor | None = None

    def __call__(self, model: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        self.task_ids = kwargs.pop("task_ids", None)
        return args, kwargs

    def ids(self, batch_size: int, device: torch.device) -> torch.Tensor:  # (B,)
        if self.task_ids is None:
            if self.n_tasks > 1:
                raise ValueError(f"this Poly model has {self.n_tasks} tasks: pass task_ids (one per example)")
            return torch.zeros(batch_size, dtype=torch.long, device=device)
        ids = torch.as_tensor(self.task_ids, device=device).long().view(-1)
        if ids.numel() != batch_size or ids.min() < 0 or ids.max() >= self.n_tasks:
            raise ValueError(f"task_ids must hold {batch_size} ids in 0..{self.n_tasks - 1}, got {ids.tolist()}")
        return ids


class PolyLinear(Wrapper):
    def __init__(self, base: nn.Module, routing: TaskRouting, r: int, n_tasks: int, n_skills: int,
                 n_splits: int) -> None:
        super().__init__()
        d_in, d_out = linear_dims(base)
        if d_in % n_splits or d_out % n_splits:
            raise ValueError(f"n_splits {n_splits} must divide d_in {d_in} and d_out {d_out}")
        self.base, self.routing, self.r = base, routing, r
        self.n_splits, self.n_skills = n_splits, n_skills
        A = torch.empty(n_splits, n_skills, d_in // n_splits, r)  # (q, s, d_in/q, r)
        for q in range(n_splits):
            for s in range(n_skills):
                A[q, s] = kaiming_uniform_(torch.empty(r, d_in // n_splits)).T  # fan-in d_in / n_splits
        self.A = nn.Parameter(A)
        self.B = nn.Parameter(torch.zeros(n_splits, n_skills, r, d_out // n_splits))  # zero: no update at init
        self.Z = nn.Parameter(torch.empty(n_tasks, n_splits * n_skills).uniform_(-1e-3, 1e-3))  # routing logits
        self.merged_task: int | None = None

    def mixing_weights(self, task_ids: torch.Tensor) -> torch.Tensor:
        """w_t for each example's task. (B,) -> (B, n_splits, n_skills)"""
        logits = self.Z[task_ids].view(-1, self.n_splits, self.n_skills)  # (B, q, s)
        if self.training:  # relaxed Bernoulli (Gumbel-sigmoid) sample at temperature 1
            u = torch.rand_like(logits).clamp(EPS, 1 - EPS)
            gates = torch.sigmoid(logits + torch.log(u) - torch.log1p(-u))
        else:
            gates = torch.sigmoid(logits)
        return gates / (gates.sum(dim=-1, keepdim=True) + EPS)

    def mixed_factors(self, task_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A_t (B, d_in, r) and B_t (B, r, d_out) for each example's task."""
        w = self.mixing_weights(task_ids)  # (B, q, s)
        A = torch.einsum("bqs,qsdr->bqdr", w, self.A)  # (B, q, d_in/q, r)
        Bm = torch.einsum("bqs,qsre->bqre", w, self.B)  # (B, q, r, d_out/q)
        n = w.shape[0]
        return A.reshape(n, -1, self.r), Bm.transpose(1, 2).reshape(n, self.r, -1)  # (B, d_in, r), (B, r, d_out)

    def delta_weight(self, task_id: int = 0) -> torch.Tensor:  # (d_out, d_in), for one task in eval mode
        was_training = self.training
        self.eval()
        A, Bm = self.mixed_factors(torch.tensor([task_id], device=self.Z.device))
        self.train(was_training)
        return (A[0] @ Bm[0]).T / self.r

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)  # (B, T, d_out)
        ids = self.routing.ids(x.shape[0], x.device)
        if self.merged_task is not None:
            if (ids != self.merged_task).any():
                raise ValueError(f"this model was merged for task {self.merged_task}; unmerge it to serve others")
            return h
        A, Bm = self.mixed_factors(ids)
        return h + (x.to(A.dtype) @ A @ Bm / self.r).to(h.dtype)  # (B, T, d_out)

    @torch.no_grad()
    def merge(self, task_id: int = 0) -> None:
        if not 0 <= task_id < self.Z.shape[0]:
            raise ValueError(f"task_id {task_id} is not one of the {self.Z.shape[0]} tasks")
        if self.merged_task is None:
            linear_weight(self.base).add_(self.delta_weight(task_id))
            self.merged_task = task_id

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged_task is not None:
            task, self.merged_task = self.merged_task, None
            linear_weight(self.base).sub_(self.delta_weight(task))


def apply(model: nn.Module, config: PolyConfig) -> nn.Module:
    freeze_base(model)
    routing = TaskRouting(config.n_tasks)
    replace_modules(model, config.target_modules, lambda t: PolyLinear(  # in the mode the model is in
        t.module, routing, config.r, config.n_tasks, config.n_skills, config.n_splits).train(t.module.training))
    model.register_forward_pre_hook(routing, with_kwargs=True)
    return model
