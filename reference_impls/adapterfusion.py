"""AdapterFusion: an attention over N frozen task adapters, learned per layer on the target task.

Two stages (paper Sec. 3):
  1. knowledge extraction: one bottleneck adapter per source task n = 1..N, each trained alone with the
     model frozen (`train_task_adapters`; Pfeiffer placement: after the FFN output projection).
  2. knowledge composition: model and adapters frozen, a fusion layer per block is trained on the target
     task (`apply` builds it, `load_adapters` puts the stage-1 adapters in, training trains the fusion).
Equation (layer l, token t; h = output of the FFN sublayer, z_n = h + adapter_n(h) the adapters' outputs):
            s_{l,t}   = softmax_n( h_{l,t}ᵀ Q_l  ⊗  z_{l,t,n}ᵀ K_l )        attention weights over the N adapters
            z'_{l,t,n} = z_{l,t,n}ᵀ V_l
            o_{l,t}   = Σ_n s_{l,t,n} z'_{l,t,n}                           replaces h before Add & Norm
            Q, K ∈ R^{d_model × d_model} with biases, V ∈ R^{d_model × d_model} without (AdapterHub's
            "dynamic" fusion: query and key nn.Linear with bias, value bias=False).
Trainable:  3 * d_model * d_model + 2 * d_model per layer   (catalog: per_layer), independent of N;
            the stage-1 adapters are frozen in stage 2 and not counted.
Paper:      "AdapterFusion: Non-Destructive Task Composition for Transfer Learning", Jonas Pfeiffer et al.,
            2021 (EACL 2021), arXiv 2005.00247.

Initialisation: V = I (the paper and AdapterHub: ones on the diagonal, the rest 1e-6; here exactly 0),
so that o is a convex combination of the adapters' outputs; Q, K use nn.Linear's init. With untrained
(zero up-projection) adapters every z_n = h, so the fused model starts equal to the base model. As in
AdapterHub, `training_hooks` adds value_reg * ||I - V||² to the loss to keep V near the identity.
Deviations: the paper's adapters also carry a layer norm, and it trains the task head in stage 2; here
the adapters are `sequential_adapter.Bottleneck` (no layer norm) and the LM head stays frozen.
Not mergeable: the attention weights depend on the input. save_trainable stores the fusion layers only;
the stage-1 adapters are kept with their tasks (`train_task_adapters` returns them) and re-loaded.

Checked against: the paper's description of the fusion attention (softmax over h Q · z_n K, values z_n V,
V initialised near the identity, the two stages; as quoted in the equation above); the adapters library
github.com/adapter-hub/adapters @88f18ebd (methods/modeling.py BertFusion, configuration/
adapter_fusion_config.py DynamicAdapterFusionConfig, model_mixin.py get_fusion_regularization_loss =
0.01 Σ ||I - V||², the value_reg default). Found and fixed: V had a bias, which AdapterHub's does not
(3 d² + 2 d per layer, not 3 d² + 3 d). Deviation kept: AdapterHub attends over the adapters' branch
outputs (up-projections, keys and values) and adds the residual h after the fusion (residual_before =
False): o = h + Σ s_n V a_n(h); here, as in the paper's notation, z_n = h + a_n(h) and o = Σ s_n V z_n.
The two agree at V = I and differ once V or the keys move. peft has no AdapterFusion. Numeric pins:
test_adapterfusion.py re-computes the fusion attention and the weighted regulariser training adds.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._composition import train_task_adapter
from reference_impls._core import Wrapper, freeze_base, linear_dims, replace_modules
from reference_impls.sequential_adapter import Bottleneck


@dataclass
class AdapterFusionConfig:
    n_adapters: int = 16                      # N, number of source-task adapters fused (the paper fuses 16)
    bottleneck: int = 48                      # m of each task adapter (d_model / 16 on BERT-base, Pfeiffer's)
    activation: str = "relu"                  # f inside each task adapter
    target_modules: tuple[str, ...] = ("down",)  # adapters and fusion follow the FFN output projection
    value_reg: float = 0.01                   # weight of ||I - V||² (AdapterHub's fusion regularisation)


class Fusion(nn.Module):
    """The fusion attention of one layer: query from h, keys and values from the adapters' outputs."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.query = nn.Linear(d_model, d_model)  # Q: (d, d), nn.Linear's init
        self.key = nn.Linear(d_model, d_model)    # K: (d, d), nn.Linear's init
        self.value = nn.Linear(d_model, d_model, bias=False)  # V: (d, d), no bias (as AdapterHub)
        # V = I: each z'_n = z_n, so o starts as a convex combination of the adapters' outputs
        nn.init.eye_(self.value.weight)

    def forward(self, h: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # h: (B, T, d) sublayer output; z: (B, T, N, d) adapter outputs
        q = self.query(h)                                  # (B, T, d)
        k = self.key(z)                                    # (B, T, N, d)
        s = torch.softmax((k @ q.unsqueeze(-1)).squeeze(-1), dim=-1)  # (B, T, N): weights over adapters
        v = self.value(z)                                  # (B, T, N, d)
        return (s.unsqueeze(-1) * v).sum(dim=-2), s        # o: (B, T, d)


class FusionLayer(Wrapper):
    """base(x), then N frozen adapters side by side, then the fusion attention over their outputs."""

    def __init__(self, base: nn.Module, n_adapters: int, m: int, activation: str) -> None:
        super().__init__()
        self.base = base
        d = linear_dims(base)[1]
        self.adapters = nn.ModuleList(Bottleneck(d, m, activation) for _ in range(n_adapters))
        self.adapters.requires_grad_(False)  # stage 2: the task adapters are fixed
        self.fusion = Fusion(d)
        self.last_weights: torch.Tensor | None = None  # s of the last forward, (B, T, N), for inspection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)                                                  # (B, T, d)
        z = torch.stack([h + a(h) for a in self.adapters], dim=-2)        # (B, T, N, d)
        o, s = self.fusion(h, z)
        self.last_weights = s.detach()
        return o


def fusion_layers(model: nn.Module) -> list[FusionLayer]:
    return [m for m in model.modules() if isinstance(m, FusionLayer)]


def train_task_adapters(model: nn.Module, batches: list[dict[str, torch.Tensor]], config: AdapterFusionConfig,
                        steps: int = 40, lr: float = 1e-2) -> list[list[dict[str, torch.Tensor]]]:
    """Stage 1: one adapter per source task (its batch), each trained separately on the frozen model."""
    return [train_task_adapter(model, batch, config.bottleneck, config.target_modules, config.activation,
                               steps, lr, seed=n) for n, batch in enumerate(batches)]


@torch.no_grad()
def load_adapters(model: nn.Module, states: list[list[dict[str, torch.Tensor]]]) -> nn.Module:
    """Put the stage-1 adapters (states[n][i]: task n, adapted module i) into the fusion layers."""
    layers = fusion_layers(model)
    for n, task_states in enumerate(states):
        if len(task_states) != len(layers):
            raise ValueError(f"task {n} has {len(task_states)} adapters, the model {len(layers)} fusion layers")
        for layer, state in zip(layers, task_states):
            layer.adapters[n].load_state_dict(state)
    return model


def fusion_regularization(model: nn.Module) -> torch.Tensor:
    """Σ_l ||I - V_l||²_F over the fusion layers."""
    return sum(((layer.fusion.value.weight - torch.eye(layer.fusion.value.weight.shape[0])) ** 2).sum()
               for layer in fusion_layers(model))


def training_hooks(model: nn.Module, config: AdapterFusionConfig) -> dict:
    return {"extra_loss": lambda: config.value_reg * fusion_regularization(model)}


def apply(model: nn.Module, config: AdapterFusionConfig) -> nn.Module:
    """Stage 2's model: N frozen adapters (untrained until `load_adapters`) and a trainable fusion per layer."""
    freeze_base(model)
    replace_modules(model, config.target_modules,
                    lambda t: FusionLayer(t.module, config.n_adapters, config.bottleneck, config.activation))
    return model
