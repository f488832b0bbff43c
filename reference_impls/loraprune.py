"""LoRAPrune: LoRA fine-tuning with structured pruning of heads and FFN channels, guided by LoRA gradients.

Equation:   every targeted layer is LoRA with channel masks:  h = m_out ⊙ (W0 (m_in ⊙ x) + (alpha / r) B A (m_in ⊙ x))
            LoRA-guided estimate of ∂L/∂W (no gradient of W is ever formed):
                G = (∂L/∂B) A + B (∂L/∂A) - (∂L/∂B)(∂L/∂A)
            importance of each weight:        Î = | G ⊙ (W0 + (alpha / r) B A) |
            importance of a group g (one attention head / one FFN channel) in one module:
                s_g = Σ_{entries of g} Î,  normalised to unit L2 norm over the module's groups,
                then summed over the modules that share the group (q, k, v rows and o columns of a head;
                gate, up rows and down columns of an FFN channel)
            moving average:                   Ī ← β Ī + (1 - β) s
            iterative pruning: sparsity p(t) rises from 0 to `sparsity` (cubic schedule after t_init steps,
            fixed for the last t_final); every delta_t steps each layer keeps its (1 - p(t)) share of heads
            and of FFN channels with the highest Ī, once-pruned groups stay pruned.
Trainable:  r * (d_in + d_out) per targeted module before pruning   (catalog: trainable_params.per_target);
            pruned rows and columns of B and A become removable along with W's.
Paper:      "LoRAPrune: Structured Pruning Meets Low-Rank Parameter-Efficient Fine-Tuning", Mingyang Zhang
            et al., 2023 (Findings of ACL 2024), arXiv 2305.18403.

Follows the authors' code (github.com/aim-uofa/LoRAPrune, loraprune/utils.py) where the paper is
terse: the second-order term - (∂L/∂B)(∂L/∂A) of G, the per-module L2 normalisation, β = 0.9, the cubic
schedule and local (per layer) pruning. Pruning is done with masks at this scale: a pruned group's
weights (and its LoRA rows/columns) no longer touch the output, so they can be cut away afterwards; we
do not physically shrink the HF modules. On grouped-query attention (k, v with fewer heads than q) only
q rows and o columns are masked, since a key/value head serves several query heads. A group set is keyed
by the block's full path and the sublayer kind (e.g. ("encoder.block.0", "attn")), so T5's encoder block
i and decoder block i never share an importance vector or a mask. On GPT-2 the fused c_attn is masked
too: its q, k and v thirds each hold n_heads groups of d_head rows; each third is normalised on its own
(as q, k, v modules are) and the three are summed, and one head's mask covers its rows in all three.

Checked against: the authors' code github.com/aim-uofa/LoRAPrune (loraprune/utils.py) for the estimate G
with its second-order term, the per-module normalisation, β and the schedule (commit not recorded); the
grouping by block path and the fused-qkv masking are this file's, checked by tests on T5 and GPT-2. The
paper's text was not re-read in this pass. peft has no LoRAPrune. The masks are
buffers; `training_hooks` computes importance and prunes. Init as LoRA (B = 0, masks = 1): the model
starts equal to the base model. Mergeable: merge() folds (alpha / r) B A into W; the masks stay.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._core import arch_symbols, find_targets, freeze_base, linear_weight, replace_module
from reference_impls.lora import LoRALinear

ROW_ROLES = {"q": "attn", "k": "attn", "v": "attn", "gate": "ffn", "up": "ffn"}  # groups are output rows
COL_ROLES = {"o": "attn", "down": "ffn"}                                        # groups are input columns


@dataclass
class LoRAPruneConfig:
    r: int = 8                        # rank of the LoRA factors
    alpha: float = 16                 # the LoRA update is scaled by alpha / r
    sparsity: float = 0.5             # share of heads and FFN channels removed at the end
    target_modules: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")  # roles (groups need roles)
    beta: float = 0.9                 # moving-average coefficient of the group importance
    total_steps: int = 1000           # T, length of training (the sparsity schedule needs it)
    t_init: int = 0                   # warm-up steps before any pruning
    t_final: int = 0                  # final steps at the target sparsity
    delta_t: int = 10                 # prune every delta_t steps


class LoRAPruneLinear(LoRALinear):
    def __init__(self, base: nn.Module, r: int, alpha: float) -> None:
        super().__init__(base, r, alpha)
        d_in, d_out = self.A.shape[1], self.B.shape[0]
        # ones: nothing pruned yet, so the layer is plain LoRA and starts equal to the base layer
        self.register_buffer("in_mask", torch.ones(d_in))    # (d_in,), columns kept
        self.register_buffer("out_mask", torch.ones(d_out))  # (d_out,), rows kept
        self.group: tuple[str, str, str] | None = None       # (block path, "attn" | "ffn", "row" | "col")
        self.group_size = 1                                   # rows / columns per group (d_head or 1)
        self.n_parts = 1                                      # 3 for GPT-2's fused (q | k | v) rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        return super().forward(x * self.in_mask) * self.out_mask  # (B, T, d_out)

    @torch.no_grad()
    def weight_importance(self) -> torch.Tensor:
        """Î = |G ⊙ (W0 + s B A)| with G the LoRA-guided gradient estimate: (d_out, d_in)."""
        gA, gB = self.A.grad, self.B.grad
        G = gB @ self.A + self.B @ gA - gB @ gA  # (d_out, d_in), the authors' estimate of ∂L/∂W
        return (G * (linear_weight(self.base) + self.delta_weight())).abs()

    @torch.no_grad()
    def group_importance(self) -> torch.Tensor:
        """s_g per group of this module, unit L2 norm: (n_groups,)."""
        I = self.weight_importance()
        per_channel = I.sum(1) if self.group[2] == "row" else I.sum(0)  # (d_out,) or (d_in,)
        s = per_channel.reshape(self.n_parts, -1, self.group_size).sum(2)  # (n_parts, n_groups)
        return (s / (torch.linalg.norm(s, dim=1, keepdim=True) + 1e-8)).sum(0)  # (n_groups,)

    @torch.no_grad()
    def set_group_mask(self, keep: torch.Tensor) -> None:  # keep: (n_groups,) bool
        channel = keep.repeat_interleave(self.group_size).repeat(self.n_parts).to(self.in_mask)  # (d_out,) or (d_in,)
        (self.out_mask if self.group[2] == "row" else self.in_mask).copy_(channel)


def prune_layers(model: nn.Module) -> list[LoRAPruneLinear]:
    return [m for m in model.modules() if isinstance(m, LoRAPruneLinear)]


class Pruner:
    """Tracks Ī per (layer, attn|ffn) group set and applies the sparsity schedule; call step(t) after
    every optimizer step, while the gradients are there."""

    def __init__(self, model: nn.Module, config: LoRAPruneConfig) -> None:
        self.c = config
        self.sets: dict[tuple[str, str], list[LoRAPruneLinear]] = {}
        for m in prune_layers(model):
            if m.group is not None:
                self.sets.setdefault(m.group[:2], []).append(m)
        self.I_bar: dict[tuple[str, str], torch.Tensor] = {}
        self.keep: dict[tuple[str, str], torch.Tensor] = {}

    def sparsity(self, step: int) -> float:
        """p(t): 0 during warm-up, cubic rise, target sparsity for the last t_final steps (authors' schedule)."""
        c = self.c
        if step <= c.t_init:
            return 0.0
        if step > c.total_steps - c.t_final:
            return c.sparsity
        progress = (step - c.t_init) / (c.total_steps - c.t_final - c.t_init)
        return c.sparsity * (1 - (1 - progress) ** 3)

    @torch.no_grad()
    def update_importance(self) -> None:
        for key, modules in self.sets.items():
            s = sum(m.group_importance() for m in modules)
            self.I_bar[key] = self.c.beta * self.I_bar[key] + (1 - self.c.beta) * s if key in self.I_bar else s

    @torch.no_grad()
    def prune(self, p: float) -> None:
        for key, modules in self.sets.items():
            I = self.I_bar[key].clone()
            keep = self.keep.get(key, torch.ones_like(I, dtype=torch.bool))
            I[~keep] = -float("inf")  # once pruned, always pruned
            n_prune = max(int(I.numel() * p), int((~keep).sum()))
            new_keep = torch.ones_like(keep)
            new_keep[I.argsort()[:n_prune]] = False
            self.keep[key] = new_keep
            for m in modules:
                m.set_group_mask(new_keep)

    def step(self, step: int) -> None:
        self.update_importance()
        if (step > self.c.t_init and step % self.c.delta_t == 0) or step == self.c.total_steps - 1:
            self.prune(self.sparsity(step))


def training_hooks(model: nn.Module, config: LoRAPruneConfig) -> dict:
    """`after_step` for _core.train: importance tracking and iterative pruning."""
    return {"after_step": Pruner(model, config).step}


def apply(model: nn.Module, config: LoRAPruneConfig) -> nn.Module:
    freeze_base(model)
    sym = arch_symbols(model.config)
    n_heads, d_head = sym["n_heads"], sym["d_head"]
    for t in find_targets(model, config.target_modules):
        layer = LoRAPruneLinear(t.module, config.r, config.alpha)
        block = re.match(r"(.*?\.\d+)\.", t.name)  # the block's full path, e.g. "decoder.block.0"
        role = t.roles[0] if t.roles else ""
        if block and role in ROW_ROLES | COL_ROLES:
            kind = ROW_ROLES.get(role) or COL_ROLES[role]
            side = "row" if role in ROW_ROLES else "col"
            width = layer.B.shape[0] if side == "row" else layer.A.shape[1]
            size = d_head if kind == "attn" else 1
            fused = kind == "attn" and side == "row" and width == 3 * n_heads * d_head and len(t.roles) == 3
            if kind == "ffn" or width == n_heads * d_head or fused:  # GQA's narrower k, v are not head-pruned
                layer.group, layer.group_size = (block.group(1), kind, side), size
                layer.n_parts = 3 if fused else 1
        replace_module(model, t.name, layer)
    return model
