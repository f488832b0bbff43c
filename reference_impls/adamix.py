"""AdaMix: a mixture of adaptation modules with stochastic routing, consistency regularisation and merging.

Equation:   adapter form (Houlsby placement, after the attention output and the FFN output):
              training:  h ← h + W_up^(j) f(W_down^(i) h + b_down^(i)) + b_up^(j),
                         i, j ~ Uniform{1..M} drawn afresh at every forward pass (stochastic routing,
                         down- and up-projection experts chosen independently), M = n_modules
              loss:      L = CE(y | x; route a) + λ · ½ (KL(p_a ‖ p_b) + KL(p_b ‖ p_a)),
                         p_a, p_b the output distributions of two forward passes with independent routes
              inference: the experts are merged by averaging their weights,
                         W_down = (1/M) Σ_i W_down^(i),  W_up = (1/M) Σ_j W_up^(j)  (biases likewise)
            lora form: h = W_0 x + (alpha / r) B^(j) A^(i) x while training, mean(B) mean(A) at inference.
Trainable:  after merging, that of the underlying module; for the adapter form
            2 * (2 * d_model * bottleneck + bottleneck + d_model) per layer      (catalog: per_layer);
            while training, M times that (with share_up, the up-projections once).
Paper:      "AdaMix: Mixture-of-Adaptations for Parameter-efficient Model Tuning", Yaqing Wang et al., 2022
            (EMNLP 2022), arXiv 2205.12410.

Each mixture stores its experts stacked in one tensor, (M, ...), so an expert not chosen in a step gets
a zero gradient rather than none (deviation: Adam's momentum can still move it a little; the paper's
separate modules would be skipped). In eval mode the mixture runs the averaged weights, which is what
`average_experts(model)` collapses the mixture to (M = 1), so the collapsed model reproduces the
inference path and stores what the catalog counts. The paper's adaptation-module sharing is the
share_up option (one up-projection shared by the down-projection experts), on by default as in the
authors' README command. Initialisation: every expert
as the underlying module (down Kaiming, up = 0; LoRA A Kaiming, B = 0), so the model starts equal to the
base model on every route (deviation: the authors' ExpertSoup keeps nn.Linear's default init for the
up-projections too, so their model does not start at the base model). The consistency term needs a second forward pass: training_hooks records the
batch and the logits of the first pass and `extra_loss` runs the second. Not mergeable in the adapter
form (f between the projections); the lora form merges its averaged update into W.

Checked against: the paper's method section (stochastic routing, consistency regularisation, module
merging by weight averaging, module sharing); the authors' code github.com/microsoft/AdaMix @d361e9d6
(src/transformers/models/expert_soup.py: MixtureSoup picks one expert per forward with randint, down and
up mixtures routed independently, inference_level 3 averages expert weights with softmax(0) = 1/M;
ExpertSoup with gelu placed after the attention-output and FFN-output dense layers; modeling_roberta.py
symmetric_KL_loss with detached targets, added with weight 1 for classification; NLG/loralib/layers.py for
the lora form, NLG/src/model.py weights the term 100 there). peft has no AdaMix. The KL is averaged over
rows as the authors' batchmean over classifier logits (B, C); on token logits it is averaged over every
position (the authors' NLG code drops padded positions first). Numeric pins: test_adamix.py re-computes the symmetric KL, its
stop-gradient, and the averaged experts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import (AdditiveUpdate, Wrapper, freeze_base, kaiming_uniform_, linear_dims,
                                   replace_modules)
from reference_impls.sequential_adapter import ACTIVATIONS


@dataclass
class AdaMixConfig:
    n_modules: int = 4                             # M, experts in each mixture
    base_method: str = "adapter"                   # the module mixed: adapter (Houlsby) or lora
    bottleneck: int = 16                           # adapter form: hidden size of each expert
    activation: str = "gelu"                       # adapter form: f between the projections (authors' ExpertSoup)
    share_up: bool = True                          # adapter form: one up-projection shared by all experts
                                                   # (the authors' README run: sharing_up 1, sharing_down 0)
    r: int = 8                                     # lora form: rank of each expert
    alpha: float = 8                               # lora form: scaling alpha / r
    consistency_weight: float = 1.0                # λ of the symmetric-KL consistency term
    target_modules: tuple[str, ...] = ("o", "down")  # adapter: follows these; lora: wraps these (use q, v)


def _route(stack: torch.Tensor, training: bool) -> torch.Tensor:
    """One random expert while training (stochastic routing), the average of all at inference."""
    if training:
        return stack[torch.randint(stack.shape[0], ()).item()]
    return stack.mean(dim=0)


def _kaiming_stack(M: int, d_out: int, d_in: int) -> torch.Tensor:
    return torch.stack([kaiming_uniform_(torch.empty(d_out, d_in)) for _ in range(M)])  # (M, d_out, d_in)


class AdapterMixture(Wrapper):
    """A sublayer's output projection followed by a mixture of M bottleneck adapters."""

    def __init__(self, base: nn.Module, M: int, m: int, activation: str, share_up: bool) -> None:
        super().__init__()
        self.base = base
        d = linear_dims(base)[1]
        self.W_down = nn.Parameter(_kaiming_stack(M, m, d))  # (M, m, d), each as nn.Linear's init
        bound = 1 / math.sqrt(d)
        self.b_down = nn.Parameter(torch.empty(M, m).uniform_(-bound, bound))  # (M, m), nn.Linear's bias init
        M_up = 1 if share_up else M
        # zero init of every up-projection: each route starts as the identity
        self.W_up = nn.Parameter(torch.zeros(M_up, d, m))  # (M_up, d, m)
        self.b_up = nn.Parameter(torch.zeros(M_up, d))     # (M_up, d)
        self.f = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)  # (B, T, d)
        # down and up experts are routed independently
        i_down = torch.randint(self.W_down.shape[0], ()).item() if self.training else None
        i_up = torch.randint(self.W_up.shape[0], ()).item() if self.training else None
        if self.training:
            W_down, b_down, W_up, b_up = self.W_down[i_down], self.b_down[i_down], self.W_up[i_up], self.b_up[i_up]
        else:  # module merging: the averaged experts
            W_down, b_down = self.W_down.mean(0), self.b_down.mean(0)
            W_up, b_up = self.W_up.mean(0), self.b_up.mean(0)
        z = self.f(F.linear(h, W_down, b_down))  # (B, T, m)
        return h + F.linear(z, W_up, b_up)       # (B, T, d)

    @torch.no_grad()
    def collapse(self) -> None:
        """Replace the experts by their average (M = 1): the inference model, at the underlying module's size."""
        for name in ("W_down", "b_down", "W_up", "b_up"):
            setattr(self, name, nn.Parameter(getattr(self, name).mean(0, keepdim=True)))


class LoRAMixture(AdditiveUpdate):
    """h = W_0 x + (alpha / r) B^(j) A^(i) x with random i, j while training; averaged A, B at inference."""

    def __init__(self, base: nn.Module, M: int, r: int, alpha: float) -> None:
        super().__init__()
        d_in, d_out = linear_dims(base)
        self.base = base
        self.scaling = alpha / r
        self.A = nn.Parameter(_kaiming_stack(M, r, d_in))    # (M, r, d_in), LoRA's init per expert
        self.B = nn.Parameter(torch.zeros(M, d_out, r))      # (M, d_out, r), zero: every route starts at W_0
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * (self.B.mean(0) @ self.A.mean(0))  # (d_out, d_in), the merged experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)
        if self.merged:
            return h
        A, B = _route(self.A, self.training), _route(self.B, self.training)  # routed independently
        return h + F.linear(F.linear(x, A) * self.scaling, B)  # (B, T, r) -> (B, T, d_out)

    @torch.no_grad()
    def collapse(self) -> None:
        self.A = nn.Parameter(self.A.mean(0, keepdim=True))
        self.B = nn.Parameter(self.B.mean(0, keepdim=True))


def average_experts(model: nn.Module) -> nn.Module:
    """Module merging: collapse every mixture to the average of its experts (what inference runs)."""
    for m in model.modules():
        if isinstance(m, (AdapterMixture, LoRAMixture)):
            m.collapse()
    return model


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """½ (KL(sg(p_a) ‖ p_b) + KL(sg(p_b) ‖ p_a)), averaged over positions; logits (..., V).

    sg = stop-gradient: as in the authors' symmetric_KL_loss, each KL term's target distribution is
    detached, so each pass is pulled towards the other and not the other way round within one term."""
    la, lb = F.log_softmax(logits_a, -1).flatten(0, -2), F.log_softmax(logits_b, -1).flatten(0, -2)  # (N, V)
    kl_ab = F.kl_div(lb, la.detach(), log_target=True, reduction="batchmean")  # KL(sg(p_a) ‖ p_b)
    kl_ba = F.kl_div(la, lb.detach(), log_target=True, reduction="batchmean")  # KL(sg(p_b) ‖ p_a)
    return 0.5 * (kl_ab + kl_ba)


class Consistency:
    """Records the inputs and logits of each training forward; `loss()` runs a second forward on the same
    inputs (another random route) and returns λ times the symmetric KL between the two."""

    def __init__(self, model: nn.Module, weight: float) -> None:
        self.model, self.weight = model, weight
        self.kwargs: dict | None = None
        self.logits: torch.Tensor | None = None
        self.busy = False
        model.register_forward_pre_hook(self._inputs, with_kwargs=True)
        model.register_forward_hook(self._outputs)

    def _inputs(self, model: nn.Module, args: tuple, kwargs: dict) -> None:
        if model.training and not self.busy:
            self.kwargs = dict(kwargs)

    def _outputs(self, model: nn.Module, args: tuple, output) -> None:
        if model.training and not self.busy:
            self.logits = output.logits

    def loss(self) -> torch.Tensor:
        if self.kwargs is None or self.logits is None:
            return torch.zeros(())
        self.busy = True
        try:
            second = self.model(**self.kwargs).logits  # an independent route
        finally:
            self.busy = False
        first, self.kwargs, self.logits = self.logits, None, None  # drop the references after use
        return self.weight * symmetric_kl(first, second)


def training_hooks(model: nn.Module, config: AdaMixConfig) -> dict:
    """`extra_loss`: the consistency term between two stochastic routes of the same batch."""
    return {"extra_loss": Consistency(model, config.consistency_weight).loss}


def apply(model: nn.Module, config: AdaMixConfig) -> nn.Module:
    freeze_base(model)
    M = config.n_modules
    if config.base_method == "adapter":
        replace_modules(model, config.target_modules,
                        lambda t: AdapterMixture(t.module, M, config.bottleneck, config.activation, config.share_up))
    elif config.base_method == "lora":
        replace_modules(model, config.target_modules, lambda t: LoRAMixture(t.module, M, config.r, config.alpha))
    else:
        raise ValueError(f"unknown base_method '{config.base_method}'; use adapter or lora")
    return model
