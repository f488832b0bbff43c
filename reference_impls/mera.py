"""MerA: merge several trained adapters into one by aligning their neurons, then averaging.

Procedure (paper Sec. 3): given adapters A^(1..N) trained on N tasks (same architecture, same places),
  1. alignment: for every adapted module, match the bottleneck neurons of each adapter A^(n) to those of
     the anchor A^(1) by optimal transport (Singh & Jaggi's OT fusion). Cost between neuron i of the
     anchor and neuron j of A^(n): "weight"-based, the squared distance of their incoming weights
     [W_down[i, :], b_down[i]]; "activation"-based, the squared distance of their activations
     f(W_down h + b_down) over the tokens of a batch, each adapter running in the model. With equal widths
     and uniform marginals the optimal plan is a permutation π (Birkhoff), found here exactly by the
     Hungarian algorithm. π permutes the rows of W_down, b_down and the columns of W_up, which leaves
     A^(n)'s function unchanged.
  2. averaging:  θ_merged = (1/N) Σ_n π_n(θ^(n))     (alignment="none" averages without step 1)
  3. the merged adapter is put in the model (`load_merged`) and fine-tuned few-shot on the target task.
Adapter:    h ← h + W_up f(W_down h + b_down) + b_up after each targeted module (sequential_adapter.py).
Trainable:  2 * d_out * bottleneck + bottleneck + d_out per targeted module (catalog: per_target): one
            adapter, whatever N; the adapters being merged were trained before and are not counted.
Paper:      "MerA: Merging Pretrained Adapters For Few-Shot Learning", Shwai He et al., 2023, arXiv 2308.15982.

Left out: the paper's "same-track" selection of which adapters to merge (the caller chooses them).
The merged adapter is a sequential_adapter.Bottleneck (no layer norm).
Initialisation before any merge: W_up = b_up = 0, so the model starts equal to the base model.
Not mergeable into the base weights: f sits between the two projections.

Checked against: the paper's abstract (arXiv 2308.15982: pretrained adapters merged into one by model
fusion; the "same-track" setting); the alignment step follows Singh & Jaggi's OT fusion as summarised
above. The method section (Sec. 3) was not re-read in this pass, and there is no authors' repository
or peft tuner to compare with. The tests pin the merge as the mean of the aligned adapters and the
Hungarian step as the cheapest assignment (brute force over all permutations).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from reference_impls import sequential_adapter as sa
from reference_impls._composition import load_adapter_states, sequential_adapters

# one adapted module's adapter: down.weight (m, d), down.bias (m,), up.weight (d, m), up.bias (d,)
State = dict[str, torch.Tensor]


@dataclass
class MeraConfig:
    bottleneck: int = 64                         # m, hidden size of every adapter (merged and source)
    activation: str = "relu"                     # f between the projections
    target_modules: tuple[str, ...] = ("down",)  # an adapter follows each (FFN output)
    alignment: str = "weight"                    # weight | activation (OT alignment costs) | none (naive averaging)


def hungarian(cost: torch.Tensor) -> torch.Tensor:
    """An assignment minimising Σ_i cost[i, π(i)] for a square cost matrix: returns π as a (n,) tensor.

    Shortest augmenting paths with potentials (Kuhn-Munkres / Jonker-Volgenant), O(n^3).
    """
    c = cost.double().tolist()
    n = len(c)
    INF = float("inf")
    u, v = [0.0] * (n + 1), [0.0] * (n + 1)  # row and column potentials
    p, way = [0] * (n + 1), [0] * (n + 1)    # p[j]: row matched to column j (1-based, 0 = none)
    for i in range(1, n + 1):
        p[0], j0 = i, 0
        minv, used = [INF] * (n + 1), [False] * (n + 1)
        while True:
            used[j0] = True
            i0, delta, j1 = p[j0], INF, 0
            for j in range(1, n + 1):
                if not used[j]:
                    cur = c[i0 - 1][j - 1] - u[i0] - v[j]
                    if cur < minv[j]:
                        minv[j], way[j] = cur, j0
                    if minv[j] < delta:
                        delta, j1 = minv[j], j
            for j in range(n + 1):
                if used[j]:
                    u[p[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while j0:  # flip the augmenting path
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
    perm = [0] * n
    for j in range(1, n + 1):
        perm[p[j] - 1] = j - 1
    return torch.tensor(perm)


def neuron_features(state: State) -> torch.Tensor:
    """Incoming weights of each bottleneck neuron, [W_down[i, :], b_down[i]]: (m, d + 1)."""
    return torch.cat([state["down.weight"], state["down.bias"][:, None]], dim=1)


def permute(state: State, perm: torch.Tensor) -> State:
    """The same adapter with its bottleneck neurons reordered: neuron i of the result is neuron perm[i]."""
    return {"down.weight": state["down.weight"][perm], "down.bias": state["down.bias"][perm],
            "up.weight": state["up.weight"][:, perm], "up.bias": state["up.bias"].clone()}


def align(anchor: State, other: State, cost: torch.Tensor | None = None) -> State:
    """`other` with its neurons matched to the anchor's: OT with uniform marginals on `cost` (m, m),
    by default the weight-based cost."""
    if cost is None:
        cost = torch.cdist(neuron_features(anchor).double(), neuron_features(other).double()) ** 2  # (m, m)
    return permute(other, hungarian(cost))


@torch.no_grad()
def neuron_activations(base: nn.Module, adapter: list[State], batch: dict[str, torch.Tensor],
                       config: MeraConfig) -> list[torch.Tensor]:
    """f(W_down h + b_down) of every bottleneck neuron over the batch's tokens, with `adapter` in a copy of
    `base`: one (B*T, m) tensor per adapted module."""
    model = load_adapter_states(apply(copy.deepcopy(base), config), adapter)
    acts: list[torch.Tensor] = []
    hooks = [m.adapter.f.register_forward_hook(lambda mod, inp, out: acts.append(out.reshape(-1, out.shape[-1])))
             for m in sequential_adapters(model)]
    model.eval()
    model(**batch)
    for h in hooks:
        h.remove()
    return acts  # modules run in model order


def merge_adapters(adapters: list[list[State]], alignment: str = "weight",
                   activations: list[list[torch.Tensor]] | None = None) -> list[State]:
    """adapters[n][i]: adapter n's state at adapted module i. Returns the merged adapter, module by module.
    alignment="activation" needs activations[n][i] from `neuron_activations` on one shared batch."""
    if alignment not in ("weight", "activation", "none"):
        raise ValueError(f"unknown alignment '{alignment}'; use weight, activation or none")
    if alignment == "activation" and activations is None:
        raise ValueError("activation-based alignment needs the adapters' activations (neuron_activations)")
    merged = []
    for i, states in enumerate(zip(*adapters)):  # one adapted module, all N adapters
        anchor, aligned = states[0], [states[0]]
        for n, other in enumerate(states[1:], start=1):
            if alignment == "none":
                aligned.append(other)
            elif alignment == "weight":
                aligned.append(align(anchor, other))
            else:  # activation: cost[i, j] = Σ_tokens (a_anchor[:, i] - a_n[:, j])²
                cost = torch.cdist(activations[0][i].T.double(), activations[n][i].T.double()) ** 2  # (m, m)
                aligned.append(align(anchor, other, cost))
        merged.append({k: torch.stack([s[k] for s in aligned]).mean(dim=0) for k in anchor})
    return merged


def load_merged(model: nn.Module, merged: list[State]) -> nn.Module:
    """Put a merged adapter (from `merge_adapters`) into a model prepared by `apply`."""
    return load_adapter_states(model, merged)


def apply(model: nn.Module, config: MeraConfig) -> nn.Module:
    """One trainable adapter per targeted module (zero up-projection), ready for `load_merged`."""
    return sa.apply(model, sa.SequentialAdapterConfig(config.bottleneck, config.activation, config.target_modules))

