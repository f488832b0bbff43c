"""ProPETL: one prototype adapter shared by all layers, and a learned binary mask per layer.

Equation:   layer l uses the sub-network  W^l = W ⊙ M^l  of the shared prototype W ∈ {W_down, W_up}:
            h ← h + (W_up ⊙ M_up^l) f((W_down ⊙ M_down^l) h + b_down) + b_up
            M^l = 1[S^l is among the top (1 - sparsity) share of S^l's entries],   S^l real-valued scores,
            trained through the straight-through estimator  ∂L/∂S^l := ∂L/∂M^l.
Trainable:  2 * d_model * bottleneck + bottleneck + d_model once (the prototype, catalog: total)
            + 2 * d_model * bottleneck per layer (the scores, catalog: per_layer).
            Stored after training: the prototype plus one bit per score.
Paper:      "One Network, Many Masks: Towards More Parameter-Efficient Transfer Learning", Guangtao Zeng,
            Peiyuan Zhang and Wei Lu, 2023 (ACL 2023), arXiv 2305.17682.

Only the adapter form is implemented (the paper also masks a shared prefix or LoRA prototype). The
adapter follows each block's FFN output projection, like a sequential adapter; the biases are shared
and not masked. W_up starts at zero, so every layer's adapter starts as the identity and the model as
the base model. Scores start uniform in [0, 1), so the layers start with different random masks. Not
mergeable: the adapter has a nonlinearity.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._core import Wrapper, arch_symbols, freeze_base, replace_modules
from reference_impls.sequential_adapter import Bottleneck


@dataclass
class ProPETLConfig:
    form: str = "adapter"                    # prototype module; only "adapter" is implemented
    bottleneck: int = 64                     # the prototype adapter's hidden size
    sparsity: float = 0.5                    # share of prototype weights each layer's mask drops
    target_modules: tuple[str, ...] = ("down",)  # the adapter follows each FFN output projection


def topk_mask(scores: torch.Tensor, keep: float) -> torch.Tensor:
    """Binary mask of the top `keep` share of scores, with a straight-through gradient to the scores."""
    k = max(1, round(keep * scores.numel()))
    threshold = scores.flatten().topk(k).values[-1]
    hard = (scores >= threshold).to(scores.dtype)  # 0/1, ties at the threshold have probability 0
    return hard + (scores - scores.detach())  # value: exactly hard (the bracket is 0); gradient: identity


class MaskedAdapter(Wrapper):
    """base(x) followed by this layer's masked view of the shared prototype adapter."""

    def __init__(self, base: nn.Module, prototype: Bottleneck, sparsity: float) -> None:
        super().__init__()
        self.base = base
        self.prototype = prototype  # the same module object in every layer
        self.keep = 1 - sparsity
        self.S_down = nn.Parameter(torch.rand_like(prototype.down.weight))  # (m, d_model)
        self.S_up = nn.Parameter(torch.rand_like(prototype.up.weight))      # (d_model, m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)  # (B, T, d_model)
        p = self.prototype
        W_down = p.down.weight * topk_mask(self.S_down, self.keep)  # (m, d_model)
        W_up = p.up.weight * topk_mask(self.S_up, self.keep)        # (d_model, m)
        z = p.f(nn.functional.linear(h, W_down, p.down.bias))      # (B, T, m)
        return h + nn.functional.linear(z, W_up, p.up.bias)


def apply(model: nn.Module, config: ProPETLConfig) -> nn.Module:
    if config.form != "adapter":
        raise NotImplementedError(f"ProPETL form '{config.form}': only 'adapter' is implemented")
    freeze_base(model)
    prototype = Bottleneck(arch_symbols(model.config)["d_model"], config.bottleneck, "relu")  # W_up = 0
    replace_modules(model, config.target_modules, lambda t: MaskedAdapter(t.module, prototype, config.sparsity))
    return model
