"""ProPETL: one prototype PEFT module shared by all layers, and a learned binary mask per layer.

Equation:   layer l uses the sub-network  W^l = W ⊙ M^l  of a shared prototype W,
            M^l = 1[|S^l| is among the top (1 - sparsity) share of |S^l|'s entries],   S^l real-valued scores,
            trained through the straight-through estimator  ∂L/∂|S^l| := ∂L/∂M^l (so ∂L/∂S^l = sign(S^l) ∂L/∂M^l).
            The prototype is one of three PEFT modules (`form`):
            adapter:  h ← h + (W_up ⊙ M_up^l) f((W_down ⊙ M_down^l) h + b_down) + b_up   after each FFN
            prefix:   P^l = P ⊙ M^l,  P ∈ R^{n_virtual_tokens × 2·n_kv_heads·d_head}, the keys and values
                      prepended to layer l's attention (as in prefix tuning)
            lora:     h = W0 x + (alpha / r) (B ⊙ M_B^l)(A ⊙ M_A^l) x   on each targeted matrix; one
                      prototype (A, B) per kind of matrix (q, v, ...) shared by the layers
Trainable:  adapter:  2 * d_model * bottleneck + bottleneck + d_model once (the prototype, catalog: total)
                      + 2 * d_model * bottleneck per layer (the scores, catalog: per_layer)
            prefix:   2 * n_virtual_tokens * n_kv_heads * d_head once + the same per layer
            lora:     r * (d_in + d_out) * (n_layers + 1) / n_layers per targeted matrix, i.e. one
                      prototype per kind of matrix plus scores of its size in every layer
            (the catalog's note states the prefix and LoRA formulas). Stored after training: the
            prototype plus one bit per score.
Paper:      "One Network, Many Masks: Towards More Parameter-Efficient Transfer Learning", Guangtao Zeng,
            Peiyuan Zhang and Wei Lu, 2023 (ACL 2023), arXiv 2305.17682.

Initialisation. Adapter: W_up = 0 and LoRA: B = 0, so every layer starts as the identity and the model
as the base model. The prefix form starts from a random prefix, as prefix tuning does (it changes the
output from the first step). Scores start Kaiming-uniform (the authors' init of their mask scores), so
the layers start with different random masks. The adapter's biases are shared and not masked.

Deviations: the prefix form trains the prototype prefix directly, without prefix tuning's
reparameterisation MLP; it reaches attention the way prefix tuning does (on T5 through the cache
argument of every self-attention).
Mergeable: the LoRA form, once its masks are fixed (merge() folds the masked update into W0); the
adapter has a nonlinearity and the prefix is attended to, so neither merges.

Checked against: the authors' code github.com/ChaosCodes/ProPETL @1c08f19c,
propetl-roberta/src/transformers/adapters/modeling.py: GetSubnet (sort the scores, zero the lowest
int((1 - k) · n), one the rest; backward passes the gradient straight through), AdapterSubnet /
PrefixSubnet / LoraSubnet (masks = GetSubnet(scores.abs(), sparsity), scores Kaiming-uniform with
a = sqrt(5), one score tensor per layer; the prefix scores one (n_layers, P, 2 d) tensor),
forward_with_mask (W_down ⊙ mask, W_up ⊙ mask, biases unmasked); scripts/run_adapter.sh (sparsity 0.5).
Naming: the authors' `sparsity` argument k is the share their GetSubnet KEEPS; here `sparsity` is the
share dropped, as the catalog defines it; at the shared default 0.5 the two agree (their LoRA and prefix
scripts pass 0.1, i.e. keep 10% in their convention). The paper's abstract was read, not its method
section. Simplifications: the score tensors' Kaiming bound uses this file's (out, in) shapes (the
authors' adapter masks are stored transposed, so their bound is 1/sqrt(bottleneck) for the down mask);
no separate mask learning rate.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import (AdditiveUpdate, Wrapper, arch_symbols, find_targets, freeze_base,
                                   kaiming_uniform_, linear_dims, replace_module)
from reference_impls.prefix_tuning import PrefixEncoder, attach_prefix
from reference_impls.sequential_adapter import Bottleneck

FORMS = ("adapter", "prefix", "lora")
DEFAULT_TARGETS = {"adapter": ("down",), "lora": ("q", "v")}


@dataclass
class ProPETLConfig:
    form: str = "adapter"                    # prototype module: adapter, prefix or lora
    bottleneck: int = 64                     # adapter form: the prototype adapter's hidden size
    n_virtual_tokens: int = 16               # prefix form: prefix length
    r: int = 8                               # lora form: rank of the prototype
    alpha: float = 16                        # lora form: the update is scaled by alpha / r
    sparsity: float = 0.5                    # share of prototype weights each layer's mask drops
    target_modules: tuple[str, ...] | None = None  # None: the form's default (adapter: down; lora: q, v)

    @property
    def targets(self) -> tuple[str, ...]:
        return self.target_modules if self.target_modules is not None else DEFAULT_TARGETS.get(self.form, ())


def topk_mask(scores: torch.Tensor, keep: float) -> torch.Tensor:
    """Binary mask of the top `keep` share of |scores| (the authors' GetSubnet(scores.abs(), k)), with a
    straight-through gradient to |scores|, hence sign(scores) times the mask's gradient to the scores."""
    magnitude = scores.abs()
    k = max(1, round(keep * scores.numel()))
    threshold = magnitude.flatten().topk(k).values[-1]
    hard = (magnitude >= threshold).to(scores.dtype)  # 0/1, ties at the threshold have probability 0
    return hard + (magnitude - magnitude.detach())  # value: exactly hard (the bracket is 0); gradient: identity


# -- adapter form ---------------------------------------------------------------------------------
class MaskedAdapter(Wrapper):
    """base(x) followed by this layer's masked view of the shared prototype adapter."""

    def __init__(self, base: nn.Module, prototype: Bottleneck, sparsity: float) -> None:
        super().__init__()
        self.base = base
        self.prototype = prototype  # the same module object in every layer
        self.keep = 1 - sparsity
        # scores: Kaiming-uniform, as the authors' AdapterSubnet (the mask reads |S|)
        self.S_down = nn.Parameter(kaiming_uniform_(torch.empty_like(prototype.down.weight)))  # (m, d_model)
        self.S_up = nn.Parameter(kaiming_uniform_(torch.empty_like(prototype.up.weight)))      # (d_model, m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)  # (B, T, d_model)
        p = self.prototype
        W_down = p.down.weight * topk_mask(self.S_down, self.keep)  # (m, d_model)
        W_up = p.up.weight * topk_mask(self.S_up, self.keep)        # (d_model, m)
        z = p.f(F.linear(h, W_down, p.down.bias))                   # (B, T, m)
        return h + F.linear(z, W_up, p.up.bias)


# -- prefix form ----------------------------------------------------------------------------------
class MaskedPrefix(PrefixEncoder):
    """Prefix tuning's cache plumbing (`cache`, `inject`) over per-layer masked views of one prefix."""

    def __init__(self, n_layers: int, n_kv_heads: int, d_head: int, n_virtual_tokens: int, sparsity: float) -> None:
        nn.Module.__init__(self)  # PrefixEncoder.__init__ would build a separate prefix for every layer
        self.n_layers, self.n_kv_heads, self.d_head = n_layers, n_kv_heads, d_head
        self.n_virtual_tokens, self.keep = n_virtual_tokens, 1 - sparsity
        self.prototype = nn.Parameter(torch.randn(n_virtual_tokens, 2 * n_kv_heads * d_head))  # (P, 2·n_kv·hs)
        # one Kaiming-uniform score tensor for all layers, as the authors' PrefixSubnet
        self.scores = nn.Parameter(kaiming_uniform_(torch.empty(n_layers, n_virtual_tokens, 2 * n_kv_heads * d_head)))  # (L, P, 2·n_kv·hs)

    def kv(self) -> torch.Tensor:
        P, L = self.n_virtual_tokens, self.n_layers
        masks = torch.stack([topk_mask(s, self.keep) for s in self.scores])  # (L, P, 2·n_kv·hs)
        prefix = self.prototype * masks                                     # (L, P, 2·n_kv·hs)
        # columns per layer are ordered (key|value, head, d_head), as in prefix tuning
        return prefix.view(L, P, 2, self.n_kv_heads, self.d_head).permute(0, 2, 3, 1, 4).reshape(
            2 * L, self.n_kv_heads, P, self.d_head)  # (2L, n_kv, P, hs)

    def drop_projection(self) -> None:
        """Nothing to drop: the prototype is trained directly."""


# -- LoRA form ------------------------------------------------------------------------------------
class LoRAPrototype(nn.Module):
    def __init__(self, d_in: int, d_out: int, r: int) -> None:
        super().__init__()
        self.A = nn.Parameter(kaiming_uniform_(torch.empty(r, d_in)))  # (r, d_in)
        # zero init: B A = 0, so every layer starts identical to its base layer
        self.B = nn.Parameter(torch.zeros(d_out, r))  # (d_out, r)


class MaskedLoRA(AdditiveUpdate):
    """W0 x plus this layer's masked view of the shared prototype's low-rank update."""

    def __init__(self, base: nn.Module, prototype: LoRAPrototype, alpha: float, sparsity: float) -> None:
        super().__init__()
        self.base = base
        self.prototype = prototype  # shared with the same kind of matrix in every layer
        self.scaling = alpha / prototype.A.shape[0]
        self.keep = 1 - sparsity
        self.S_A = nn.Parameter(kaiming_uniform_(torch.empty_like(prototype.A)))  # (r, d_in), as the authors' LoraSubnet
        self.S_B = nn.Parameter(kaiming_uniform_(torch.empty_like(prototype.B)))  # (d_out, r)
        self.merged = False

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.prototype
        return p.A * topk_mask(self.S_A, self.keep), p.B * topk_mask(self.S_B, self.keep)  # (r, d_in), (d_out, r)

    def delta_weight(self) -> torch.Tensor:
        A, B = self.factors()
        return self.scaling * (B @ A)  # (d_out, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)  # (B, T, d_out)
        if self.merged:
            return h
        A, B = self.factors()
        return h + F.linear(F.linear(x, A) * self.scaling, B)  # (B, T, r) -> (B, T, d_out)



# -- apply ----------------------------------------------------------------------------------------
def apply(model: nn.Module, config: ProPETLConfig) -> nn.Module:
    if config.form not in FORMS:
        raise ValueError(f"ProPETL form '{config.form}': choose one of {', '.join(FORMS)}")
    freeze_base(model)
    s = arch_symbols(model.config)
    if config.form == "adapter":
        prototype = Bottleneck(s["d_model"], config.bottleneck, "relu")  # W_up = 0
        for t in find_targets(model, config.targets):
            replace_module(model, t.name, MaskedAdapter(t.module, prototype, config.sparsity))
    elif config.form == "prefix":
        model.prefix_encoder = MaskedPrefix(s["n_layers"], s["n_kv_heads"], s["d_head"], config.n_virtual_tokens,
                                            config.sparsity)
        attach_prefix(model, model.prefix_encoder)
    else:
        prototypes: dict[tuple, LoRAPrototype] = {}  # (roles, d_in, d_out) -> the kind's shared prototype
        for t in find_targets(model, config.targets):
            dims = linear_dims(t.module)
            key = (t.roles, *dims)
            if key not in prototypes:
                prototypes[key] = LoRAPrototype(*dims, config.r)
            replace_module(model, t.name, MaskedLoRA(t.module, prototypes[key], config.alpha, config.sparsity))
    return model
