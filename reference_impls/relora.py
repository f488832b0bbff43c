"""ReLoRA: high-rank training through a sequence of low-rank updates (LoRA with merge-and-restart).

Equation:   between restarts  h = W x + (alpha / r) * B A dropout(x),   A ∈ R^{r × d_in},  B ∈ R^{d_out × r}
            every reset_every optimizer steps (a restart):
                W ← W + (alpha / r) B A          (merge: W is frozen for the optimizer, changed only here)
                A ~ Kaiming-uniform,  B ← 0      (re-init: the model is unchanged by the restart)
                Adam's m and v of A and B: the optimizer_prune share with the smallest |value| set to 0
                                              (1.0, the authors' default, zeroes all of them)
            jagged learning rate: during the restart_warmup_steps steps that follow a restart, the step of
            A and B is multiplied by k / restart_warmup_steps (k = steps since the restart, from 0), on
            top of whatever schedule the trainer runs (the paper's base schedule is cosine).
            After n restarts W - W0 is a sum of n rank-r matrices, so it can reach rank n * r.
Trainable:  r * (d_in + d_out) per targeted module at any moment   (catalog: trainable_params.per_target)
Paper:      "ReLoRA: High-Rank Training Through Low-Rank Updates", Vladislav Lialin et al., 2023 (ICLR 2024),
            arXiv 2307.05695 (v1 titled "Stack More Layers Differently: ...").

Training needs `training_hooks(model, config)`: the restarts, the optimizer reset and the jagged step
scale run after optimizer steps. The hooks do not receive the optimizer, so the first `optimizer.step()`
over the LoRA factors is found with torch's global step pre-hook, which then removes itself and keeps a
reference to that optimizer. The jagged scale is applied as LoRA+ applies its ratio: Adam's (and AdamW's,
without weight decay) step is proportional to the learning rate, so scaling the step of A and B after
`optimizer.step()` equals scaling their learning rate, whatever schedule the trainer runs.

Simplifications: the paper's full-rank warm start is ordinary full fine-tuning before apply() and is
left out; the authors' script also trains embeddings, norms, lm_head and biases beside the factors
(torchrun_main.py), which this file does not (the catalog counts the factors only).

Checked against: the paper §3 (merge-and-reinit, partial optimizer reset, jagged schedule of Fig. 2:
"set the learning rate to zero and perform a quick (50-100 steps) learning rate warm-up"); the authors'
code github.com/Guitaricet/relora @ db9c7c4 (torchrun_main.py: lora_alpha=32 and lora_dropout=0.1
hard-coded, Adam, reset_optimizer_on_relora=True zeroes exp_avg and exp_avg_sq, the magnitude pruning
alternative keeps |x| above the prune_ratio quantile) and peft_pretraining/relora.py (merge_and_reinit:
W += B A * scaling, A Kaiming-uniform, B = 0) and training_utils.py (cosine_restarts: within
restart_warmup_steps of a restart the lr is restart_step / restart_warmup_steps times the cosine value);
README @ bf1873e (--relora 5000, --restart_warmup_steps 100). peft 0.21 has no ReLoRA tuner. Numeric pins:
test_relora.py re-computes the merged weight W0 + (alpha / r) B A after a restart, B = 0 after it, the
magnitude pruning of Adam's moments and the jagged scale of the steps.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from reference_impls._core import freeze_base, kaiming_uniform_, linear_weight, replace_modules
from reference_impls.lora import LoRALinear


@dataclass
class ReLoRAConfig:
    r: int = 128                      # rank of each low-rank stretch (authors' --lora_r default)
    alpha: float = 32                 # the update is scaled by alpha / r (hard-coded 32 in the authors' script)
    dropout: float = 0.1              # dropout on the input of the low-rank branch (authors' script)
    reset_every: int = 5000           # optimizer steps between merge-and-restart (README's --relora 5000)
    restart_warmup_steps: int = 100   # steps of linear lr re-warm-up after a restart (README's example)
    optimizer_prune: float = 1.0      # share of A's and B's Adam moments zeroed by magnitude at a restart
    target_modules: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")  # every block matrix


class ReLoRALinear(LoRALinear):
    """LoRA's layer with a restart: fold the current B A into W and start a fresh pair of factors."""

    @torch.no_grad()
    def restart(self) -> None:
        if self.merged:
            raise RuntimeError("restart() on a merged layer: unmerge it first")
        linear_weight(self.base).add_(self.delta_weight())  # W ← W + (alpha / r) B A: (d_out, d_in)
        kaiming_uniform_(self.A)
        self.B.zero_()  # B = 0: the new pair adds nothing, so the restart leaves the model's function unchanged


def layers(model: nn.Module) -> list[ReLoRALinear]:
    return [m for m in model.modules() if isinstance(m, ReLoRALinear)]


@torch.no_grad()
def prune_by_magnitude_(t: torch.Tensor, ratio: float) -> None:
    """Zero the entries of t with |t| at or below its `ratio` quantile (all of them for ratio 1)."""
    if ratio >= 1.0:
        t.zero_()
    elif ratio > 0.0:
        threshold = torch.quantile(t.abs().flatten().float(), ratio).to(t.dtype)
        t.mul_((t.abs() > threshold).to(t.dtype))


@torch.no_grad()
def reset_optimizer_state(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], ratio: float) -> None:
    """Partial reset of Adam's first and second moments of `params` (the step count is kept, as the authors do)."""
    for p in params:
        state = optimizer.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                prune_by_magnitude_(state[key], ratio)


def lr_scale(step: int, config: ReLoRAConfig) -> float:
    """The jagged multiplier of step `step` (0-based): k / restart_warmup_steps for the first steps after a
    restart (k = 0 right after it, so that step's lr is zero), 1 otherwise and before the first restart."""
    k = step % config.reset_every
    if step < config.reset_every or k >= config.restart_warmup_steps:
        return 1.0
    return k / config.restart_warmup_steps


class _OptimizerFinder:
    """Finds the optimizer that steps `params` with torch's global step pre-hook, then unregisters it."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        self.ids = {id(p) for p in params}
        self.ref: Callable[[], Any] = lambda: None
        self.handle = register_optimizer_step_pre_hook(self._pre_step)

    def _pre_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if any(id(p) in self.ids for group in optimizer.param_groups for p in group["params"]):
            self.ref = weakref.ref(optimizer)
            self.handle.remove()

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        return self.ref()


def training_hooks(model: nn.Module, config: ReLoRAConfig) -> dict[str, Callable[..., Any]]:
    """`extra_loss` remembers A and B before the step (it adds nothing to the loss); `after_step` scales
    the step by the jagged multiplier and, every reset_every steps, restarts and resets the optimizer."""
    lora = layers(model)
    params = [p for m in lora for p in (m.A, m.B)]
    finder = _OptimizerFinder(params)
    before: list[torch.Tensor] = []

    def remember() -> torch.Tensor:
        before[:] = [p.detach().clone() for p in params]
        return torch.zeros((), device=params[0].device)

    @torch.no_grad()
    def after_step(step: int) -> None:
        scale = lr_scale(step, config)
        if scale != 1.0 and before:
            for p, p0 in zip(params, before):
                p.copy_(p0 + scale * (p - p0))
        if (step + 1) % config.reset_every == 0:
            for m in lora:
                m.restart()
            if finder.optimizer is not None:
                reset_optimizer_state(finder.optimizer, params, config.optimizer_prune)

    return {"extra_loss": remember, "after_step": after_step}


def apply(model: nn.Module, config: ReLoRAConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules,
                    lambda t: ReLoRALinear(t.module, config.r, config.alpha, config.dropout))
    return model
