"""Hyperformer++: one hypernetwork, shared by all layers and tasks, generates every adapter.

Equation:   for task τ, layer l and adapter position j (0: after attention, 1: after the FFN):
              I = LN(h_I([z_τ; i_l; p_j]))          task projector, an MLP  3E -> H -> P with ReLU,
                                                    then a layer norm over the P entries of I
              D = W^D I,  b_D = w^D I,  U = W^U I,  b_U = w^U I     (each generator also has a bias)
              γ = W^γ I,  β = W^β I                 conditional layer norm after the up-projection
              adapter(h) = h + LN_{γ,β}(U f(D h + b_D) + b_U),   D ∈ R^{m × d}, U ∈ R^{d × m}
            z_τ ∈ R^E task embeddings, i_l ∈ R^E layer-id embeddings, p_j ∈ R^E position embeddings,
            all trained; m = d_model // reduction_factor.
Trainable:  total  n_tasks * E + 2 * E + (3 * E + 1) * H + (H + 1) * P
                   + (P + 1) * (2 * d_model * m + m + 3 * d_model)
            per layer  E (the layer-id embedding)                    (catalog: total + per_layer)
            E = task_embedding_dim, H = task_hidden_dim, P = projected_task_embedding_dim.
Paper:      "Parameter-efficient Multi-task Fine-tuning for Transformers via Shared Hypernetworks",
            Rabeeh Karimi Mahabadi et al., 2021 (ACL-IJCNLP 2021), arXiv 2106.04489.

Checked against: the paper §2.1 and Figure 1 (the adapter hypernetwork h_A and the layer-norm
hypernetwork h_LN conditioned on I_τ) and §2.4 (the compact model's projector over task, layer id and
position); the authors' code github.com/rabeehk/hyperformer @cb218076 (adapters/adapter_modeling.py
AdapterLayersOneHyperNetController: I = LayerNorm(TaskHyperNet([z; i; p])), eps 1e-6;
adapter_controller.py MetaLayersAdapterController with the default add_layer_norm_after_adapter=True,
add_layer_norm_before_adapter=False: output = LN(up(f(down(x)))) + x). peft has no Hyperformer.

Defaults follow the paper and its code: E = 512, P = 64, H = 128; the generators are linear maps with
bias (the code's AdapterLayersHyperNet / LayerNormHyperNet). The layer norm over I has no affine
parameters here (the code's nn.LayerNorm has 2P): every consumer of I is a linear generator, which
absorbs that affine map exactly, so the function class is the same and the count matches the catalog's.
Initialisation: the paper's code draws every generator from N(0, 1e-2) with zero bias; here the
up-projection generators (W^U, w^U) and the β generator start at zero, so U f(.) + b_U = 0, LN_{γ,β}(0) =
β = 0, and every adapter starts as the identity and the model as the base model (γ's generator keeps the
code's N(0, 1e-2) init, so γ starts small and the first update is a small one).
Deviation: the paper also makes the model's own layer norms task-conditional and trains the task head;
here only the adapter's layer norm is conditional and the head stays frozen.
Once the task is known the generated adapters are fixed, but they are recomputed every forward here
(no cache). Not mergeable: f sits between the two projections.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from reference_impls._composition import blocks
from reference_impls._core import Wrapper, find_targets, freeze_base, linear_dims, matches, replace_module
from reference_impls.sequential_adapter import ACTIVATIONS


@dataclass
class HyperformerPlusPlusConfig:
    n_tasks: int = 8                          # tasks trained together (GLUE's 8 in the paper)
    task_embedding_dim: int = 512             # E: size of z_τ, i_l and p_j
    task_hidden_dim: int = 128                # H: hidden size of the task projector h_I
    projected_task_embedding_dim: int = 64    # P: size of the projected embedding I fed to the generators
    reduction_factor: int = 32                # adapter bottleneck m = d_model // reduction_factor
    activation: str = "silu"                  # f inside the adapter (swish, the code's default)
    target_modules: tuple[str, ...] = ("o", "down")  # adapter positions j = 0, 1: after attention, after FFN


class HyperNetwork(nn.Module):
    """Everything trainable: embeddings, task projector and weight generators, shared by all adapters."""

    def __init__(self, config: HyperformerPlusPlusConfig, n_layers: int, d_model: int) -> None:
        super().__init__()
        E, H, P = config.task_embedding_dim, config.task_hidden_dim, config.projected_task_embedding_dim
        self.d, self.m, self.P = d_model, d_model // config.reduction_factor, P
        d, m = self.d, self.m
        # embeddings start N(0, 1) (the code's task-embedding init): distinct inputs for every (τ, l, j)
        self.task_embeddings = nn.Parameter(torch.randn(config.n_tasks, E))       # (n_tasks, E): z_τ
        self.layer_embeddings = nn.Parameter(torch.randn(n_layers, E))            # (L, E): i_l
        self.position_embeddings = nn.Parameter(torch.randn(len(config.target_modules), E))  # (2, E): p_j
        self.projector = nn.Sequential(nn.Linear(3 * E, H), nn.ReLU(), nn.Linear(H, P))  # h_I
        self.down_weight = nn.Linear(P, m * d)  # W^D: I -> D (m, d)
        self.down_bias = nn.Linear(P, m)        # w^D: I -> b_D (m,)
        self.up_weight = nn.Linear(P, d * m)    # W^U: I -> U (d, m)
        self.up_bias = nn.Linear(P, d)          # w^U: I -> b_U (d,)
        self.ln_weight = nn.Linear(P, d)        # W^γ: I -> γ (d,)
        self.ln_bias = nn.Linear(P, d)          # W^β: I -> β (d,)
        for gen in (self.down_weight, self.down_bias, self.ln_weight):
            nn.init.normal_(gen.weight, std=1e-2)  # the paper's code: N(0, 1e-2), zero bias
            nn.init.zeros_(gen.bias)
        # zero up- and β-generators: U = 0, b_U = 0, β = 0 for every (τ, l, j), so LN_{γ,β}(0) = 0 and
        # every adapter starts as the identity
        for gen in (self.up_weight, self.up_bias, self.ln_bias):
            nn.init.zeros_(gen.weight)
            nn.init.zeros_(gen.bias)
        self.task = 0  # the task whose adapters are generated (set_task)

    def generate(self, layer: int, position: int) -> dict[str, torch.Tensor]:
        """The adapter of (self.task, layer, position)."""
        zil = torch.cat([self.task_embeddings[self.task], self.layer_embeddings[layer],
                         self.position_embeddings[position]])  # (3E,)
        I = F.layer_norm(self.projector(zil), (self.P,), eps=1e-6)  # (P,), the code's LayerNorm on I
        d, m = self.d, self.m
        return {"D": self.down_weight(I).view(m, d), "b_D": self.down_bias(I),
                "U": self.up_weight(I).view(d, m), "b_U": self.up_bias(I),
                "gamma": self.ln_weight(I), "beta": self.ln_bias(I)}


class HyperAdapter(Wrapper):
    """base(x) followed by the adapter the shared hypernetwork generates for this (layer, position)."""

    def __init__(self, base: nn.Module, hypernet: HyperNetwork, layer: int, position: int, activation: str) -> None:
        super().__init__()
        self.base = base
        self._hypernet = (hypernet,)  # a tuple: the shared module is registered once, on the model
        self.layer, self.position = layer, position
        self.f = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)                                          # (B, T, d)
        w = self._hypernet[0].generate(self.layer, self.position)
        z = self.f(h @ w["D"].T + w["b_D"])                       # (B, T, m)
        u = z @ w["U"].T + w["b_U"]                               # (B, T, d)
        return h + F.layer_norm(u, u.shape[-1:], w["gamma"], w["beta"])  # (B, T, d)


def set_task(model: nn.Module, task: int) -> nn.Module:
    """Choose the task τ whose adapters every later forward uses."""
    if not 0 <= task < model.hypernet.task_embeddings.shape[0]:
        raise ValueError(f"task {task} out of range")
    model.hypernet.task = task
    return model


def apply(model: nn.Module, config: HyperformerPlusPlusConfig) -> nn.Module:
    freeze_base(model)
    block_names = [name for name, _ in blocks(model)]
    d_model = model.get_input_embeddings().weight.shape[1]
    model.hypernet = HyperNetwork(config, len(block_names), d_model)
    for t in find_targets(model, config.target_modules):
        layer = next(i for i, b in enumerate(block_names) if t.name.startswith(b + "."))
        position = next(j for j, pat in enumerate(config.target_modules) if pat in t.roles or matches(t.name, pat))
        if linear_dims(t.module)[1] != d_model:
            raise ValueError(f"{t.name}: adapters go on modules that output d_model")
        replace_module(model, t.name, HyperAdapter(t.module, model.hypernet, layer, position, config.activation))
    return model
