"""AutoPEFT: multi-objective search over a PEFT configuration space (serial adapter, parallel adapter, prefix,
and the layers they go into), returning the Pareto front of task score versus trainable parameters.

Equation:   a configuration c = (layers ⊆ {1..L}, m_SA, m_PA, P) puts into every chosen block
              a serial adapter after the FFN:   h ← h + W_up ReLU(W_down h + b_down) + b_up,  bottleneck m_SA
              a parallel adapter beside the FFN: FFN(x) + W_up ReLU(W_down x + b_down) + b_up, bottleneck m_PA
              a prefix of length P on attention (keys and values);  a size 0 leaves that module out.
            search: min over c of (loss_dev(c), |θ(c)|) — each candidate is trained briefly on the task and
            scored on held-out data; the non-dominated candidates form the Pareto front, and
            `best_under(budget)` picks the lowest-loss configuration with |θ(c)| <= budget.
Trainable:  for a configuration, per chosen block
              serial_bottleneck (2 d_model + 1) + min(1, serial_bottleneck) d_model
              + parallel_bottleneck (2 d_model + 1) + min(1, parallel_bottleneck) d_model
              + 2 n_virtual_tokens n_kv_heads d_head
            (catalog: per_layer, for the default with every block chosen; with k chosen blocks, k times it)
Paper:      "AutoPEFT: Automatic Configuration Search for Parameter-Efficient Fine-Tuning", Han Zhou, Xingchen
            Wan, Ivan Vulić, Anna Korhonen, 2024 (TACL 2024), arXiv 2301.12132.

Deviations: the paper searches with multi-objective Bayesian optimisation (a Gaussian-process surrogate and
an expected-hypervolume-improvement acquisition); here the search is random sampling of the same space
followed by the exact Pareto front of the evaluated candidates (no surrogate), small enough for tests.
The size grids follow the paper's doubling pattern, clipped to d_model here (the exact grids were not
checked). The prefix is trained directly (no reparameterisation MLP) and goes into the chosen blocks
only (see _hybrid.LayerPrefix). Supported: BERT- and LLaMA-style models. Not mergeable.

Checked against: the authors' code github.com/cambridgeltl/autopeft @572dcafa (adapterhub/bo/
search_space.py: per-layer leave_out bits and three log2 reduction factors in 0..10; adapterhub/
nas_search.py, adapter "sappa": serial and parallel bottleneck = 768 / factor, prefix length = 768 /
factor, a factor above 768 (or a prefix below 1) removes that module, factor 512 means size 1; the
search itself is BoTorch multi-objective BO in adapterhub/bo/). Deviation found and kept: the authors'
sizes are d_model / 2^k, this file's grid is 2^k clipped to d_model (same doubling, other end points);
the search is random sampling, as stated above. The paper's text was not re-read in this pass. peft has
no AutoPEFT. Numeric pins: test_autopeft.py checks the exact Pareto front of hand-made trials and the
count of a configuration against 2 d m + m + d + 2 P n_kv d_head.
"""
from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from reference_impls._core import arch_symbols, count_trainable, freeze_base, train
from reference_impls._hybrid import LayerPlan, apply_plan, layer_cost

#: the search grids (0: module absent); sizes double, as in the paper's space
SIZE_GRID = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
PREFIX_GRID = (0, 1, 2, 4, 8, 16, 32, 64)


@dataclass
class AutoPEFTConfig:
    serial_bottleneck: int = 64              # m_SA, serial adapter after the FFN (0: none)
    parallel_bottleneck: int = 64            # m_PA, parallel adapter beside the FFN (0: none)
    n_virtual_tokens: int = 8                # P, prefix length (0: none)
    layers: tuple[int, ...] | None = None    # blocks that get the modules (None: all)


def plans(config: AutoPEFTConfig, n_layers: int) -> list[LayerPlan]:
    chosen = set(range(n_layers)) if config.layers is None else set(config.layers)
    return [LayerPlan(serial=config.serial_bottleneck, parallel=config.parallel_bottleneck,
                      prefix=config.n_virtual_tokens) if l in chosen else LayerPlan() for l in range(n_layers)]


def cost(model_config, config: AutoPEFTConfig) -> int:
    """|θ(c)| without building the model."""
    s = arch_symbols(model_config)
    return sum(layer_cost(p, s) for p in plans(config, s["n_layers"]))


def apply(model: nn.Module, config: AutoPEFTConfig) -> nn.Module:
    freeze_base(model)
    apply_plan(model, plans(config, arch_symbols(model.config)["n_layers"]))
    return model


# -- the search ----------------------------------------------------------------------------------
@dataclass
class Trial:
    config: AutoPEFTConfig
    n_trainable: int      # |θ(c)|, counted on the built model
    loss: float           # held-out loss after the short training run


@dataclass
class SearchResult:
    trials: list[Trial]
    pareto: list[Trial] = field(default_factory=list)  # non-dominated trials, by increasing n_trainable

    def best_under(self, budget: int) -> AutoPEFTConfig:
        """The lowest-loss configuration on the front that spends at most `budget` parameters."""
        feasible = [t for t in self.pareto if t.n_trainable <= budget]
        if not feasible:
            raise ValueError(f"no evaluated configuration fits a budget of {budget} parameters")
        return min(feasible, key=lambda t: t.loss).config


def pareto_front(trials: list[Trial]) -> list[Trial]:
    """Trials that no other trial beats on both objectives (fewer parameters and lower loss, one strictly)."""
    def dominates(a: Trial, b: Trial) -> bool:
        return (a.n_trainable <= b.n_trainable and a.loss <= b.loss
                and (a.n_trainable < b.n_trainable or a.loss < b.loss))
    front = [t for t in trials if not any(dominates(o, t) for o in trials)]
    return sorted(front, key=lambda t: (t.n_trainable, t.loss))


def sample(rng: random.Random, n_layers: int, d_model: int) -> AutoPEFTConfig:
    """One configuration drawn uniformly from the space (each block chosen with probability 1/2)."""
    sizes = [m for m in SIZE_GRID if m <= d_model]
    layers = tuple(l for l in range(n_layers) if rng.random() < 0.5) or (rng.randrange(n_layers),)
    while True:
        c = AutoPEFTConfig(rng.choice(sizes), rng.choice(sizes), rng.choice(PREFIX_GRID), layers)
        if c.serial_bottleneck or c.parallel_bottleneck or c.n_virtual_tokens:  # at least one module
            return c


def search(base: nn.Module, train_batch: dict[str, torch.Tensor], dev_batch: dict[str, torch.Tensor],
           n_trials: int = 8, steps: int = 10, lr: float = 1e-2, seed: int = 0,
           max_params: int | None = None,
           on_trial: Callable[[Trial], None] | None = None) -> SearchResult:
    """Random multi-objective search: sample, train each candidate `steps` steps on `train_batch`,
    score its loss on `dev_batch`; candidates above `max_params` (if given) are skipped unevaluated."""
    rng = random.Random(seed)
    s = arch_symbols(base.config)
    trials: list[Trial] = []
    tries = 0
    while len(trials) < n_trials and tries < 100 * n_trials:
        tries += 1
        c = sample(rng, s["n_layers"], s["d_model"])
        if max_params is not None and cost(base.config, c) > max_params:
            continue
        torch.manual_seed(seed + len(trials))
        model = apply(copy.deepcopy(base), c)
        train(model, train_batch, steps, lr)
        with torch.no_grad():
            loss = model(**dev_batch).loss.item()
        trials.append(Trial(c, count_trainable(model), loss))
        if on_trial:
            on_trial(trials[-1])
    return SearchResult(trials, pareto_front(trials))

