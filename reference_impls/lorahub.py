"""LoraHub: compose N frozen upstream LoRA modules with N weights found by gradient-free search.

Equation:   per adapted layer, with upstream modules (A_i, B_i), i = 1..N (all of rank r):
                Â = Σ_i w_i A_i,   B̂ = Σ_i w_i B_i,   h = W0 x + (alpha / r) B̂ Â x
            (the modules' factors are averaged, as in the paper and its code, not their products B_i A_i)
            w = argmin_w  L(few examples; w) + l1_weight · (1/N) Σ_i |w_i|,   w ∈ [-1.5, 1.5]^N, from w = 0,
            minimised without gradients (the paper: nevergrad's CMA-ES, budget max_steps evaluations)
Trainable:  n_modules in total (one weight per upstream module)     (catalog: trainable_params.total)
Paper:      "LoraHub: Efficient Cross-Task Generalization via Dynamic LoRA Composition", Chengsong Huang
            et al., 2023, arXiv 2307.13269.

Upstream modules: LoRA adapters saved with `_core.save_trainable` from `lora.apply(model, LoRAConfig(r,
alpha, target_modules))` on the same base model, listed in `upstream`; with `upstream = ()` there are
n_modules random stand-ins (seeded), which is what the generic tests use. They are frozen buffers.

Init w = 0 (the authors' init): the composed update is 0 and the model starts equal to the base model.
The search (`lorahub_search`, or one generation per step of `_core.train` through `training_hooks`) is a
(1 + λ) evolution strategy with step-size adaptation (the 1/5 success rule), standing in for nevergrad's
CMA-ES (not a dependency here); bounds, init, L1 term and budget follow the authors' code. w is an
nn.Parameter so that it is counted, saved and loaded like every method's trained numbers, but its
gradient is masked to zero: LoRAHub uses no gradients (and at w = 0 the gradient of B̂ Â vanishes anyway).
Mergeable: the composed module is an ordinary LoRA update B̂ Â.

Checked against: the authors' code github.com/sail-sg/lorahub @df73afe5 lorahub/algorithm.py (get_score
and get_final_weights sum w_i times every lora_A and lora_B tensor of each module, i.e. the factors are
averaged; default_l1_regularization = 0.05 * mean_i |w_i|; ng.p.Array(init=0, lower=-1.5, upper=1.5);
ng.optimizers.NGOpt with budget max_inference_step, which has no default there); the paper's abstract and
secondary summaries of its COMPOSE / ADAPT stages (m̂ = (Σ w_i A_i)(Σ w_i B_i), CMA-ES); the method
section itself was not read. Simplifications: the (1 + λ) evolution strategy replaces nevergrad's NGOpt /
CMA-ES; max_steps = 40 counts generations of `population` evaluations, not single evaluations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from reference_impls._core import AdditiveUpdate, Target, find_targets, freeze_base, kaiming_uniform_, \
    linear_dims, replace_modules


@dataclass
class LoraHubConfig:
    n_modules: int = 20               # N: upstream LoRA modules composed (one weight each)
    r: int = 16                       # rank of the upstream modules
    alpha: float = 32                 # their scaling alpha / r
    target_modules: tuple[str, ...] = ("q", "v")  # the layers the upstream modules adapt
    upstream: tuple[str, ...] = ()    # safetensors files of the upstream LoRAs; () = seeded random stand-ins
    l1_weight: float = 0.05           # weight of the L1 penalty mean_i |w_i| in the search objective
    bound: float = 1.5                # each w_i is searched in [-bound, bound]
    max_steps: int = 40               # search budget (generations)
    population: int = 4               # candidates per generation (λ)
    sigma: float = 0.5                # initial mutation step size
    seed: int = 0                     # seeds the stand-ins and the search


class LoraHubLinear(AdditiveUpdate):
    def __init__(self, base: nn.Module, A: torch.Tensor, B: torch.Tensor, w: nn.Parameter, scaling: float) -> None:
        super().__init__()
        self.base = base
        self.register_buffer("A_up", A)  # (N, r, d_in), the frozen upstream A_i
        self.register_buffer("B_up", B)  # (N, d_out, r), the frozen upstream B_i
        self.w = w                       # (N,), shared by every layer (one parameter, counted once)
        self.scaling = scaling
        self.merged = False

    def composed(self) -> tuple[torch.Tensor, torch.Tensor]:
        A = torch.einsum("n,nri->ri", self.w, self.A_up)  # Â: (r, d_in)
        B = torch.einsum("n,nor->or", self.w, self.B_up)  # B̂: (d_out, r)
        return A, B

    def delta_weight(self) -> torch.Tensor:
        A, B = self.composed()
        return self.scaling * B @ A  # (d_out, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        h = self.base(x)
        if self.merged:
            return h
        A, B = self.composed()
        return h + self.scaling * (x @ A.T) @ B.T  # (B, T, d_out)


def _upstream(model: nn.Module, targets: list[Target], config: LoraHubConfig
              ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per target: (A stacked (N, r, d_in), B stacked (N, d_out, r))."""
    if config.upstream:
        from safetensors.torch import load_file

        if len(config.upstream) != config.n_modules:
            raise ValueError(f"n_modules = {config.n_modules} but {len(config.upstream)} upstream files")
        states = [load_file(path) for path in config.upstream]
        return [(torch.stack([s[f"{t.name}.A"] for s in states]), torch.stack([s[f"{t.name}.B"] for s in states]))
                for t in targets]
    g = torch.Generator().manual_seed(config.seed)
    out = []
    for t in targets:  # stand-ins: LoRA-shaped modules as if trained (A as LoRA's init, B random)
        d_in, d_out = linear_dims(t.module)
        A = torch.stack([kaiming_uniform_(torch.empty(config.r, d_in)) for _ in range(config.n_modules)])
        B = torch.randn(config.n_modules, d_out, config.r, generator=g) / config.r ** 0.5
        out.append((A, B))
    return out


def apply(model: nn.Module, config: LoraHubConfig) -> nn.Module:
    freeze_base(model)
    targets = find_targets(model, config.target_modules)
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)  # the stand-ins' A do not depend on the caller's RNG
        modules = _upstream(model, targets, config)
    # zero init (the authors'): Â = B̂ = 0, so the model starts equal to the base model
    w = nn.Parameter(torch.zeros(config.n_modules))  # (N,)
    w.register_hook(torch.zeros_like)  # no gradients: w is found by search (see lorahub_search)
    layers = iter(modules)
    replace_modules(model, config.target_modules,
                    lambda t: LoraHubLinear(t.module, *next(layers), w, config.alpha / config.r))
    return model


def weights(model: nn.Module) -> nn.Parameter:
    return next(m.w for m in model.modules() if isinstance(m, LoraHubLinear))


@torch.no_grad()
def objective(model: nn.Module, batch: dict[str, torch.Tensor], w: torch.Tensor, l1_weight: float) -> float:
    """L(batch; w) + l1_weight · mean_i |w_i| (the authors' penalty: a mean, not a sum), evaluated with the
    candidate weights w."""
    param = weights(model)
    old = param.detach().clone()
    param.copy_(w)
    loss = model(**batch).loss.item()
    param.copy_(old)
    return loss + l1_weight * w.abs().mean().item()


class Search:
    """(1 + λ) evolution strategy on w, one generation per step(); keeps the best w in the model."""

    def __init__(self, model: nn.Module, config: LoraHubConfig) -> None:
        self.model, self.config = model, config
        self.sigma = config.sigma
        self.g = torch.Generator().manual_seed(config.seed)
        self.best: float | None = None

    @torch.no_grad()
    def step(self, batch: dict[str, torch.Tensor]) -> float:
        c, w = self.config, weights(self.model)
        if self.best is None:
            self.best = objective(self.model, batch, w.detach(), c.l1_weight)
        noise = torch.randn(c.population, w.numel(), generator=self.g)          # (λ, N)
        candidates = (w.detach() + self.sigma * noise).clamp(-c.bound, c.bound)  # (λ, N)
        scores = [objective(self.model, batch, cand, c.l1_weight) for cand in candidates]
        i = min(range(len(scores)), key=scores.__getitem__)
        if scores[i] < self.best:  # success: move there and widen the search
            self.best = scores[i]
            w.copy_(candidates[i])
            self.sigma *= 1.5
        else:                      # failure: narrow it (together: the 1/5 success rule)
            self.sigma *= 1.5 ** -0.25
        return self.best


def lorahub_search(model: nn.Module, batch: dict[str, torch.Tensor], config: LoraHubConfig) -> list[float]:
    """The LoraHub procedure: max_steps generations of gradient-free search; returns the best objective
    after each generation (non-increasing)."""
    model.eval()
    search = Search(model, config)
    return [search.step(batch) for _ in range(config.max_steps)]


def training_hooks(model: nn.Module, config: LoraHubConfig) -> dict[str, Callable[..., Any]]:
    """For `_core.train`: one search generation after each (no-op, zero-gradient) optimizer step, on the
    batch of that step's forward (captured by a forward pre-hook)."""
    search = Search(model, config)
    seen: dict[str, Any] = {}

    def capture(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not seen.get("busy"):  # not the search's own evaluations
            seen["batch"] = kwargs if not args else {**dict(zip(("input_ids", "attention_mask"), args)), **kwargs}

    model.register_forward_pre_hook(capture, with_kwargs=True)

    def after_step(step: int) -> None:
        seen["busy"] = True
        try:
            search.step(seen["batch"])
        finally:
            seen["busy"] = False

    return {"after_step": after_step}
