"""UniPELT: LoRA, prefix tuning and a bottleneck adapter in every block, each behind a learned gate.

Equation:   gates    G_m = mean_t σ(W_Gm x_m,t + b_Gm),   W_Gm ∈ R^{1 × d_in},  x_m = the input of submodule m
                     (one scalar per sequence: the sigmoid of every token, averaged over the T tokens)
            LoRA     h = W_0 x + G_L · B A x          on W_q and W_v, each with its own gate G_Lq, G_Lv;
                     the gate takes the place of LoRA's alpha / r
            prefix   head_i = Attention(x W_q^i, [G_P P_K^i; x W_k^i], [G_P P_V^i; x W_v^i])
            adapter  h ← h_F + G_A · (W_up ReLU(W_down h_F + b_down) + b_up),
                     h_F = the FFN output (before the residual and layer norm), W_down ∈ R^{m × d_model},
                     m = d_model // reduction_factor
Trainable:  per target (W_q, W_v): r * (d_in + d_out) + d_in + 1   (LoRA and its gate)
            per layer: 2 * d_model * m + m + d_model        (adapter)
                       + 2 * n_virtual_tokens * n_kv_heads * d_head   (prefix keys and values)
                       + 2 * (d_model + 1)                  (the gates G_P, G_A)
Paper:      "UniPELT: A Unified Framework for Parameter-Efficient Language Model Tuning", Yuning Mao et al.,
            2022 (ACL 2022), arXiv 2110.07577.

Checked against: the paper §3 (gating: G = σ(W_G x) scales each submodule's output); the authors' code
github.com/morningmoni/UniPELT @2f2ecb79 (lora_layers.py LoRA_Linear: one `lora_gate` = Linear(in_features,
1) per LoRA-adapted projection, `scaling = mean over dim 1 (tokens) of sigmoid(lora_gate(x))`, i.e. the
gate *replaces* alpha / r; the adapter and prefix gates are likewise averaged over tokens); AdapterHub's
LoRA and Adapter modules (use_gating: sigmoid, mean over tokens, no alpha / r). peft has no UniPELT.
`gating="token"` keeps this file's earlier variant as an ablation: per-token LoRA and adapter gates and
the LoRA gate multiplying alpha / r (the prefix gate stays per sequence).

Built from the wave-1 pieces: lora.LoRALinear (A Kaiming, B = 0), prefix_tuning.PrefixEncoder (the prefix
reaches attention as a pre-filled key/value cache; here the cache scales each layer's prefix by that
layer's G_P when the layer adds its own keys) and sequential_adapter.Bottleneck (W_up = 0). Deviation:
the prefix is trained directly by default (prefix_projection=False), without the reparameterisation MLP
the paper uses, so the count is the catalog's; set prefix_projection=True and call
prefix_tuning.drop_projection after training for the paper's variant. Gate weights start at PyTorch's
nn.Linear init (G ≈ 0.5). B = 0 and W_up = 0 silence LoRA and the adapter at init, but the prefix
already changes the output. Supported: BERT-style encoders and LLaMA-style decoders (the paper used
BERT); not mergeable: the gates depend on the input, and the prefix and adapter cannot be folded.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from reference_impls._core import Wrapper, arch_symbols, family, find_targets, freeze_base, linear_dims, replace_module
from reference_impls.lora import LoRALinear
from reference_impls.prefix_tuning import PrefixEncoder, PrefixTuningConfig
from reference_impls.sequential_adapter import Bottleneck


@dataclass
class UniPELTConfig:
    r: int = 8                                   # LoRA rank
    alpha: float = 2                             # LoRA's alpha / r, used only by gating="token" (the gate replaces it)
    n_virtual_tokens: int = 10                   # prefix length per layer
    reduction_factor: int = 16                   # adapter bottleneck m = d_model // reduction_factor
    prefix_projection: bool = False              # train the prefix through the reparameterisation MLP
    projection_hidden: int = 512                 # that MLP's hidden size, if used
    target_modules: tuple[str, ...] = ("q", "v")  # LoRA targets (the paper: W_q and W_v)
    gating: str = "paper"                        # "paper": gates averaged over tokens; "token": per token


class Gate(nn.Module):
    """G = mean_t σ(W_G x_t + b_G): one scalar per sequence in (0, 1); per token if per_token."""

    def __init__(self, d_model: int, per_token: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(d_model, 1)  # W_G: (1, d_model), b_G: (1,), nn.Linear's init
        self.per_token = per_token

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_model)
        g = torch.sigmoid(self.linear(x))  # (B, T, 1)
        return g if self.per_token else g.mean(dim=1, keepdim=True)  # (B, 1, 1): averaged over tokens


class GatedLoRALinear(LoRALinear):
    """h = W_0 x + G_L(x) · B A x with this projection's own gate G_L (gating="paper");
    h = W_0 x + G_L(x) · (alpha / r) B A x with a per-token gate (gating="token")."""

    def __init__(self, base: nn.Module, r: int, alpha: float, gating: str = "paper") -> None:
        super().__init__(base, r, alpha)
        self.gate = Gate(self.A.shape[1], per_token=gating == "token")  # G_L reads this projection's input
        if gating == "paper":
            self.scaling = 1.0  # the gate replaces alpha / r

    # the gate depends on x, so the update cannot be folded into W: no merge for _core.merge to find
    merge = None  # type: ignore[assignment]
    unmerge = None  # type: ignore[assignment]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        z = F.linear(x, self.A) * self.scaling  # (B, T, r)
        return self.base(x) + self.gate(x) * F.linear(z, self.B)  # (B, T, d_out)


class GatedAdapter(Wrapper):
    """The FFN's output projection followed by a gated adapter: h_F = base(z); h_F + G_A(h_F) · adapter(h_F)."""

    def __init__(self, base: nn.Module, m: int, gating: str = "paper") -> None:
        super().__init__()
        self.base = base
        d = linear_dims(base)[1]
        self.adapter = Bottleneck(d, m, "relu")                # W_up = 0: the adapter starts silent
        self.gate = Gate(d, per_token=gating == "token")      # G_A reads the adapter's input h_F

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.base(z)  # (B, T, d_model)
        return h + self.gate(h) * self.adapter(h)


class GatedPrefixCache(DynamicCache):
    """A key/value cache pre-filled with the prefix; when layer i adds its own keys, the prefix rows are
    first scaled by that layer's G_P (computed from the layer's input by a pre-hook on its attention)."""

    def __init__(self, encoder: "GatedPrefixEncoder") -> None:
        super().__init__()
        self.encoder = encoder
        self.gated: set[int] | None = None  # None while the prefix is being filled in

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):  # transformers 5 passes kwargs=
        if self.gated is not None and layer_idx not in self.gated and layer_idx in self.encoder.g:
            g = self.encoder.g.pop(layer_idx)[:, None, None, None]  # (B, 1, 1, 1)
            layer = self.layers[layer_idx]
            layer.keys, layer.values = g * layer.keys, g * layer.values  # G_P P_K, G_P P_V: (B, n_kv, P, hs)
            self.gated.add(layer_idx)
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)


class GatedPrefixEncoder(PrefixEncoder):
    """prefix_tuning's encoder plus one gate G_P per layer; builds a GatedPrefixCache."""

    def __init__(self, n_layers: int, n_kv_heads: int, d_head: int, d_model: int, config: PrefixTuningConfig) -> None:
        super().__init__(n_layers, n_kv_heads, d_head, d_model, config)
        self.gates = nn.ModuleList(Gate(d_model) for _ in range(n_layers))
        self.g: dict[int, torch.Tensor] = {}  # layer -> G_P of the current forward, (B,)

    def cache(self, batch_size: int) -> GatedPrefixCache:
        kv = self.kv()  # (2L, n_kv, P, hs)
        cache = GatedPrefixCache(self)
        for layer in range(self.n_layers):
            cache.update(kv[2 * layer].expand(batch_size, -1, -1, -1), kv[2 * layer + 1].expand(batch_size, -1, -1, -1),
                         layer)  # (B, n_kv, P, hs) each; ungated until the layer runs
        cache.gated = set()
        return cache


class ObservePrefixGate:
    """Forward pre-hook for one layer's attention: compute that layer's G_P from the attention input.
    (An object rather than a closure, so that copy.deepcopy of the model rebinds it to the copy.)"""

    def __init__(self, encoder: GatedPrefixEncoder, layer: int) -> None:
        self.encoder, self.layer = encoder, layer

    def __call__(self, attention: nn.Module, args: tuple, kwargs: dict) -> None:
        x = kwargs.get("hidden_states", args[0] if args else None)  # (B, T, d_model)
        self.encoder.g[self.layer] = self.encoder.gates[self.layer](x).reshape(-1)  # (B,): mean over tokens


def apply(model: nn.Module, config: UniPELTConfig) -> nn.Module:
    if family(model) not in ("bert", "llama"):
        raise ValueError("this UniPELT supports BERT-style encoders and LLaMA-style decoders")
    if config.gating not in ("paper", "token"):
        raise ValueError(f"gating must be 'paper' or 'token', not '{config.gating}'")
    freeze_base(model)
    s = arch_symbols(model.config)
    d = s["d_model"]
    # prefix with one gate per layer, routed through the backbone's key/value cache
    encoder = GatedPrefixEncoder(s["n_layers"], s["n_kv_heads"], s["d_head"], d,
                                 PrefixTuningConfig(config.n_virtual_tokens, config.prefix_projection,
                                                    config.projection_hidden))
    model.prefix_encoder = encoder
    model.base_model.register_forward_pre_hook(encoder.inject, with_kwargs=True)
    # attention modules in layer order (the parent of each W_q), each gets its G_P hook
    queries = find_targets(model, ["q"])
    assert len(queries) == s["n_layers"], "expected one query projection per block"
    for layer, q in enumerate(queries):
        attention = model.get_submodule(q.name.rpartition(".")[0])
        attention.register_forward_pre_hook(ObservePrefixGate(encoder, layer), with_kwargs=True)
    # LoRA on the targets, each with its own gate G_L
    for t in find_targets(model, config.target_modules):
        replace_module(model, t.name, GatedLoRALinear(t.module, config.r, config.alpha, config.gating))
    # gated adapter after each FFN
    for t in find_targets(model, ["down"]):
        m = linear_dims(t.module)[1] // config.reduction_factor
        replace_module(model, t.name, GatedAdapter(t.module, m, config.gating))
    return model
