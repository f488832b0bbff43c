"""S3Delta-M: differentiable search of where to put which delta modules under a parameter budget.

Equation:   supernet: every candidate c (a delta module of some type at some position) contributes
              z_c · Δ_c(x),    z_c = σ(α_c + s),
            with α_c a trainable structure parameter and s the shift of the "shifted global sigmoid":
            the one scalar with  Σ_c z_c · |θ_c| = B,  B = floor(budget · |Θ|)  (found by bisection, no
            gradient through s), so that the expected trainable size stays at the budget while α moves.
            bi-level search (first-order DARTS): alternate  α ← α - η_α ∇_α L_dev(θ, α)  and
                                                           θ ← θ - η ∇_θ L_train(θ, α)
            selection: candidates by decreasing α_c, each kept if it still fits in B; the rest are removed,
            the gates dropped (z = 1), and the selected structure is retrained.
            Candidates per block ("M": mixed types): LoRA on W_q and on W_v (rank r), a serial adapter after
            the FFN (bottleneck), and a bias update Δb on each of W_q, W_k, W_v, W_o and the FFN output.
Trainable:  the supernet built by apply(), per block
              r (2 d_model + n_heads d_head + n_kv_heads d_head) + bottleneck (2 d_model + 1) + d_model
              + (n_heads + 2 n_kv_heads) d_head + 2 d_model + 8   (the 8 structure parameters α_c)
            (catalog: per_layer); after search and `finalize`, at most floor(budget · |Θ|).
Paper:      "Sparse Structure Search for Delta Tuning" (v1: "... for Parameter-Efficient Tuning"),
            Shengding Hu et al., 2022 (NeurIPS 2022), arXiv 2206.07382.

Deviations and omissions: the candidate set is a subset of the paper's (no layer-norm tuning, no prefix,
no low-rank adapter variants); the shift is solved on the expected size with deterministic gates (no
stochastic relaxation); each Δb is one candidate per projection, LoRA one per projection, the adapter one
per block. Module inits as in their own methods (LoRA B = 0, adapter W_up = 0, Δb = 0), so the supernet
starts equal to the base model. Supported: BERT- and LLaMA-style models (see _hybrid.py). Not mergeable.
Checked against: the authors' code github.com/thunlp/S3Delta @c8fbd098, NAS_global/s3delta.py
(global_strategy "shift": p = σ((α - bia) / β) with bia from scipy's fsolve on Σ p·num_param =
max_num_param·(1 - EPS), computed in numpy, so no gradient flows through it; β = 1 by default,
argparser.py) and its defaults using_gumbel = True (a logistic-noise relaxation of the gates while
searching) and shift_detach = True (p rescaled to p / Σp · (Σp).detach()). Here s = -bia, β = 1,
deterministic gates (no Gumbel noise, no shift_detach rescaling), bisection instead of fsolve. The paper's
abstract was read, not its method section.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import floor
from fractions import Fraction

import torch
from torch import nn

from reference_impls._core import Wrapper, arch_symbols, freeze_base, n_params, replace_module
from reference_impls._hybrid import BiasDelta, GatedLoRA, SerialAdapter, block_targets


@dataclass
class S3DeltaMConfig:
    budget: float = 0.0001       # share of the model's parameters the final structure may train
    r: int = 8                   # rank of the LoRA candidates
    bottleneck: int = 8          # bottleneck of the adapter candidates


class StructureGates(nn.Module):
    """α for every candidate, and z = σ(α + s) with the shift s that puts the expected size at the budget."""

    def __init__(self, costs: list[int], budget_params: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(len(costs)))  # (n_candidates,): all candidates equal at start
        self.register_buffer("costs", torch.tensor(costs, dtype=torch.float64), persistent=False)
        self.budget_params = budget_params
        self.z: torch.Tensor | None = None  # gates of the current forward

    @torch.no_grad()
    def shift(self) -> float:
        """s with Σ σ(α + s) |θ_c| = B (bisection; Σ is increasing in s)."""
        a = self.alpha.detach().double()
        size = lambda s: float((torch.sigmoid(a + s) * self.costs).sum())  # noqa: E731
        lo, hi = -60.0, 60.0
        if size(hi) <= self.budget_params:
            return hi
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if size(mid) < self.budget_params else (lo, mid)
        return (lo + hi) / 2

    def refresh(self, *_) -> None:
        """Forward pre-hook on the model: compute the gates once per forward."""
        self.z = torch.sigmoid(self.alpha + self.shift())  # (n_candidates,)

    def expected_size(self) -> float:
        return float((torch.sigmoid(self.alpha.detach().double() + self.shift()) * self.costs).sum())


class GateValue:
    """The gate of candidate `index` (an object, not a closure, so that deepcopy rebinds it)."""

    def __init__(self, gates: StructureGates, index: int) -> None:
        self.gates, self.index = gates, index

    def __call__(self) -> torch.Tensor:
        return self.gates.z[self.index]


@dataclass
class Candidate:
    name: str        # module name of the delta module in the model
    kind: str        # lora | adapter | bias
    cost: int        # its trainable parameters


def apply(model: nn.Module, config: S3DeltaMConfig) -> nn.Module:
    """Build the supernet: every candidate in place, each behind its gate z_c."""
    budget_params = floor(Fraction(config.budget).limit_denominator(10**9) * n_params(model))
    freeze_base(model)
    d = arch_symbols(model.config)["d_model"]
    modules: list[tuple[str, str, nn.Module]] = []
    for b in block_targets(model):
        for role in ("q", "k", "v", "o", "down"):
            replace_module(model, b[role], BiasDelta(model.get_submodule(b[role])))
            modules.append((b[role], "bias", model.get_submodule(b[role])))
        for role in ("q", "v"):  # LoRA around the bias update: name.base is the BiasDelta
            replace_module(model, b[role], GatedLoRA(model.get_submodule(b[role]), config.r, config.r))
            modules.append((b[role], "lora", model.get_submodule(b[role])))
        replace_module(model, b["down"], SerialAdapter(model.get_submodule(b["down"]), config.bottleneck, d))
        modules.append((b["down"], "adapter", model.get_submodule(b["down"])))
    costs = [sum(p.numel() for n, p in m.named_parameters() if not n.startswith("base.")) for _, _, m in modules]
    model.structure_gates = StructureGates(costs, budget_params)
    for i, (_, _, m) in enumerate(modules):
        m.gate = (GateValue(model.structure_gates, i),)
    model.candidates = [Candidate(name, kind, c) for (name, kind, _), c in zip(modules, costs)]
    model.gates_hook_id = model.register_forward_pre_hook(model.structure_gates.refresh).id
    return model


def _modules_of(model: nn.Module) -> list[nn.Module]:
    """The candidate modules in candidate order (each kind sits at a fixed depth of its name's wrappers)."""
    out = []
    for c in model.candidates:
        m = model.get_submodule(c.name)
        want = {"adapter": SerialAdapter, "lora": GatedLoRA, "bias": BiasDelta}[c.kind]
        while not isinstance(m, want):
            m = m.base
        out.append(m)
    return out


def search(model: nn.Module, train_batch: dict[str, torch.Tensor], dev_batch: dict[str, torch.Tensor],
           steps: int = 20, lr: float = 1e-2, lr_alpha: float = 5e-2) -> list[float]:
    """First-order bi-level search on a supernet from apply(); returns the dev losses."""
    gates = model.structure_gates
    weights = [p for n, p in model.named_parameters() if p.requires_grad and p is not gates.alpha]
    opt_w, opt_a = torch.optim.Adam(weights, lr=lr), torch.optim.Adam([gates.alpha], lr=lr_alpha)
    model.train()
    dev_losses = []
    for _ in range(steps):
        opt_a.zero_grad(set_to_none=True)  # upper level: structure on the dev data
        loss = model(**dev_batch).loss
        dev_losses.append(loss.item())
        loss.backward()
        opt_a.step()
        opt_w.zero_grad(set_to_none=True)  # lower level: delta weights on the training data
        model(**train_batch).loss.backward()
        opt_w.step()
    model.eval()
    return dev_losses


def select(model: nn.Module) -> list[int]:
    """Indices of the chosen candidates: by decreasing α, each kept if it still fits in the budget."""
    gates = model.structure_gates
    order = torch.argsort(gates.alpha.detach(), descending=True, stable=True).tolist()
    chosen, used = [], 0
    for i in order:
        if used + model.candidates[i].cost <= gates.budget_params:
            chosen.append(i)
            used += model.candidates[i].cost
    return sorted(chosen)


def _unwrap(model: nn.Module, m: Wrapper) -> None:
    """Put m's base layer back where m is."""
    for parent in model.modules():
        for attr, child in parent.named_children():
            if child is m:
                setattr(parent, attr, m.base)
                return


def finalize(model: nn.Module, chosen: list[int] | None = None) -> nn.Module:
    """Keep the chosen candidates without gates (z = 1), remove the others and the structure parameters."""
    chosen = set(select(model) if chosen is None else chosen)
    for i, m in enumerate(_modules_of(model)):
        m.gate = ()
        if i not in chosen:
            _unwrap(model, m)
    model._forward_pre_hooks.pop(model.gates_hook_id)  # the gates' refresh hook
    del model.structure_gates
    model.chosen = sorted(chosen)
    return model
