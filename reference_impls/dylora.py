"""DyLoRA: Dynamic search-free LoRA, one module trained to work at every rank b <= r_max.

Equation:   h = W0 x + (alpha / b) * B[:, :b] A[:b, :] x,   A ∈ R^{r_max × d_in},  B ∈ R^{d_out × r_max},
            b ~ Uniform{r_min, ..., r_max} drawn afresh at every training forward pass (nested dropout:
            the components kept are always the first b, so they become ordered by importance);
            at inference b is a free choice in 1..r_max (`set_rank`), by default r_max.
            "frozen" mode: only the b-th row of A and column of B receive gradients; rows < b are detached.
Trainable:  r_max * (d_in + d_out) per targeted module   (catalog: trainable_params.per_target);
            a model truncated to rank b keeps b * (d_in + d_out).
Paper:      "DyLoRA: Parameter-Efficient Tuning of Pre-trained Models using Dynamic Search-Free Low-Rank
            Adaptation", Mojtaba Valipour et al., 2023 (EACL 2023), arXiv 2210.07558.

Deviation to know about: the paper samples b once per iteration, and the authors' GLUE script draws one b
for the whole model at every step (a TrainerCallback calling model.set_rank(randint(0, r_max), frozen=
True)); here every module draws its own b at each training forward pass (global torch RNG, so seeded
runs repeat). That script also trains in the frozen mode, which is off by default here. Init as LoRA (A ~ Kaiming-uniform, B = 0): the model starts equal to the base model at
every rank. Mergeable like LoRA, at the rank set for inference.

Checked against: the authors' code github.com/huawei-noah/Efficient-NLP @bb44348b (DyLoRA/loralib/
DyLoRA.py `dynamic`: keeps the first b = current_rank + 1 columns of Bᵀ-shaped A and of B, each times
sqrt(r_max / b), with scaling alpha / r_max in layers.py, i.e. alpha / b on the product; frozen: the
first b − 1 detached; examples/NLU/.../run_glue.py: the per-step callback above, evaluation at every
rank). The paper's text was not re-read in this pass. peft has no DyLoRA. Numeric pins: test_dylora.py
re-computes h = W0 x + (alpha / b) B[:, :b] A[:b] x for several b, the sampled range r_min..r_max and
which components get gradients in both modes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import AdditiveUpdate, freeze_base, kaiming_uniform_, linear_dims, replace_modules


@dataclass
class DyLoRAConfig:
    r_max: int = 8                                # largest rank trained (the size of A and B)
    r_min: int = 1                                # smallest rank sampled during training
    alpha: float = 16                             # the update is scaled by alpha / b for rank b
    frozen: bool = False                          # paper's "frozen" mode: train only the b-th component
    target_modules: tuple[str, ...] = ("q", "v")  # roles or module-name suffixes (LoRA's placement)


class DyLoRALinear(AdditiveUpdate):
    def __init__(self, base: nn.Module, r_max: int, r_min: int, alpha: float, frozen: bool = False) -> None:
        super().__init__()
        if not 1 <= r_min <= r_max:
            raise ValueError(f"need 1 <= r_min <= r_max, got r_min={r_min}, r_max={r_max}")
        d_in, d_out = linear_dims(base)
        self.base = base
        self.r_max, self.r_min, self.alpha, self.frozen = r_max, r_min, alpha, frozen
        self.A = nn.Parameter(kaiming_uniform_(torch.empty(r_max, d_in)))  # (r_max, d_in)
        # zero init: B A = 0 at every rank, so the wrapped layer starts identical to the base layer
        self.B = nn.Parameter(torch.zeros(d_out, r_max))  # (d_out, r_max)
        self.rank = r_max           # b used outside training (set_rank)
        self.last_b = r_max         # b of the latest forward pass (for tests and logging)
        self.merged = False

    def factors(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(A[:b], B[:, :b]); in frozen mode the first b - 1 components carry no gradient."""
        A, B = self.A[:b], self.B[:, :b]  # (b, d_in), (d_out, b)
        if self.frozen and self.training:
            A = torch.cat([A[:b - 1].detach(), A[b - 1:]])
            B = torch.cat([B[:, :b - 1].detach(), B[:, b - 1:]], dim=1)
        return A, B

    def delta_weight(self) -> torch.Tensor:
        A, B = self.factors(self.rank)
        return (self.alpha / self.rank) * (B @ A)  # (d_out, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)  # (B, T, d_out)
        if self.merged:
            return h
        b = int(torch.randint(self.r_min, self.r_max + 1, ())) if self.training else self.rank
        self.last_b = b
        A, B = self.factors(b)
        z = F.linear(x, A)  # (B, T, b)
        return h + F.linear(z * (self.alpha / b), B)  # (B, T, d_out)


def dylora_layers(model: nn.Module) -> list[DyLoRALinear]:
    return [m for m in model.modules() if isinstance(m, DyLoRALinear)]


def set_rank(model: nn.Module, b: int) -> nn.Module:
    """Use rank b (1..r_max) in every DyLoRA module at inference: the search-free truncation."""
    for m in dylora_layers(model):
        if not 1 <= b <= m.r_max:
            raise ValueError(f"rank {b} outside 1..{m.r_max}")
        if m.merged:
            raise RuntimeError("unmerge before changing the rank")
        m.rank = b
    return model


def apply(model: nn.Module, config: DyLoRAConfig) -> nn.Module:
    freeze_base(model)
    replace_modules(model, config.target_modules,
                    lambda t: DyLoRALinear(t.module, config.r_max, config.r_min, config.alpha, config.frozen))
    return model
