"""S4: the design pattern found by searching the PEFT design space (spindle grouping, uniform allocation,
all groups tuned, a different strategy mix per group).

Equation:   the L blocks are split into 4 consecutive groups in a spindle shape, |G_1| = |G_4| = o,
            o = max(1, L // 6), and G_2, G_3 share the rest (|G_2| = (L - 2o) // 2):  e.g. 2-4-4-2 for L = 12;
            every group is tuned, with module sizes uniform over the layers, and group g gets the strategies
              G_1: A, L     G_2: A, P     G_3: A, P, B     G_4: P, B, L        (`groups`)
            A: adapter after the FFN output  h ← h + W_up ReLU(W_down h + b_down) + b_up   (m = bottleneck)
            P: prefix keys and values in the block's attention                    (n_virtual_tokens)
            B: BitFit-style bias updates Δb on W_q, W_k, W_v, W_o and the FFN output (zero at init)
            L: LoRA h = W x + B A x on W_q and W_v                                 (rank r, alpha = r)
Trainable:  with the default groups, per block  A + P  (catalog: per_layer), plus once
            o (2 L_r + B_b - A - P) + (L - 2o - (L - 2o) // 2) B_b                 (catalog: total), with
            A = bottleneck (2 d_model + 1) + d_model,  P = 2 n_virtual_tokens n_kv_heads d_head,
            L_r = r (2 d_model + n_heads d_head + n_kv_heads d_head),  B_b = (n_heads + 2 n_kv_heads) d_head + 2 d_model
            (= o (A + 2 L_r + P + B_b) + |G_2| (A + P) + |G_3| (A + P + B_b))
Paper:      "Parameter-Efficient Fine-Tuning Design Spaces", Jiaao Chen, Aston Zhang, Xingjian Shi, Mu Li, Alex
            Smola, Diyi Yang, 2023 (ICLR 2023), arXiv 2301.01821.

What is recalled rather than checked: the group sizes of the spindle (the paper's figure; here o = L // 6)
and the strategy mix per group (the default `groups`). Deviations: "uniform allocation" is implemented as
the same module sizes in every layer (the paper allocates the same parameter count to each layer; with
different strategy mixes per group the counts then differ a little between groups); BitFit is realised as
zero-initialised bias deltas next to the frozen biases on the attention projections and the FFN output, so
that the strategy exists on models without biases (LLaMA) and the base stays frozen. The design-space
search itself (the paper's stage-wise greedy refinement S0 -> S4) is not rerun; apply() builds its
result. Supported: BERT- and LLaMA-style models (see _hybrid.py). Not mergeable (adapters, prefix).
Checked against: the paper's abstract (arXiv 2301.01821: the four patterns, spindle grouping, uniform
allocation, all groups tuned, per-group strategies among Adapter, Prefix, BitFit and LoRA); the group
sizes and the per-group mix above are recalled, not checked (see above). The authors' repository
(github.com/amazon-science/peft-design-spaces @e3e8cee1) does not settle them: the README runs the S4-model
as adapter_config "PEFT", and configuration.py's PEFTConfig is adapter-transformers' gated union of prefix
tuning (length 10), a Pfeiffer adapter (reduction 16) and LoRA (r 8) in every layer (its docstring cites
Mao et al., UniPELT), with no layer groups; there is no peft tuner either. The tests pin the spindle grouping, the per-group strategies
and the count formula.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from reference_impls._core import arch_symbols, freeze_base
from reference_impls._hybrid import LayerPlan, apply_plan


@dataclass
class S4Config:
    bottleneck: int = 16                               # A: adapter bottleneck m, the same in every layer
    r: int = 8                                         # L: LoRA rank on W_q, W_v
    n_virtual_tokens: int = 10                         # P: prefix length
    groups: tuple[str, ...] = ("AL", "AP", "APB", "PBL")  # strategy letters of G_1..G_4 (A, P, B, L)


def spindle_groups(n_layers: int) -> list[list[int]]:
    """Four consecutive groups, small at the ends and large in the middle: o, (L-2o)//2, rest, o."""
    if n_layers < 2:
        raise ValueError("the spindle grouping needs at least 2 blocks")
    o = max(1, n_layers // 6)
    a = (n_layers - 2 * o) // 2
    sizes = [o, a, n_layers - 2 * o - a, o]
    bounds = [sum(sizes[:i]) for i in range(5)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(4)]


def plans(n_layers: int, config: S4Config) -> list[LayerPlan]:
    """One LayerPlan per block from the group it falls in."""
    out = [LayerPlan() for _ in range(n_layers)]
    for group, strategies in zip(spindle_groups(n_layers), config.groups):
        unknown = set(strategies) - set("APBL")
        if unknown:
            raise ValueError(f"unknown strategies {sorted(unknown)}; use A, P, B, L")
        for layer in group:
            out[layer] = LayerPlan(serial=config.bottleneck if "A" in strategies else 0,
                                   prefix=config.n_virtual_tokens if "P" in strategies else 0,
                                   bias="B" in strategies,
                                   lora=config.r if "L" in strategies else 0)
    return out


def apply(model: nn.Module, config: S4Config) -> nn.Module:
    freeze_base(model)
    apply_plan(model, plans(arch_symbols(model.config)["n_layers"], config))
    return model
