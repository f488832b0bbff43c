"""ShadowPEFT: a small trainable shadow network that runs beside a frozen decoder and steers its blocks.

Equation:   s^(0) = Backbone(E x)          a mirrored decoder of shadow_layers blocks, fed the frozen input
                                           embeddings E x (its own embedding table removed)
            at every wrapped block l, with h_out^(l-1) the block's input:
              δ       = h_out^(l-1) - s^(l-1)                                  (discrepancy)
              h^(l)   = h_out^(l-1) + shadow_alpha · W_up W_down dropout(δ)    (injection, W_up = 0 at init)
              h_out^(l) = Block_l(h^(l))                                       (the frozen block)
              t = T_l(h_out^(l)),  g = σ(G_l(h_out^(l)))                       (two MLPs d -> r -> d, GELU)
              s^(l)   = (1 - g) ⊙ s^(l-1) + g ⊙ t                              (gated update of the shadow state)
            loss = task loss + aux_loss_weight · CE(lm_head(s^(0)), next tokens)  (the shadow's own prediction,
                   through the frozen LM head, so the shadow network also works detached)
Trainable:  per wrapped block 6 r d_model + 2 r + 2 d_model (W_down, W_up without bias; T and G with biases),
            less 4 r d_model + 2 r + 2 d_model for the last block, which has no T and G (below); once the
            shadow backbone: one mirrored Llama decoder layer and the final norm
            (2 d_model n_heads d_head + 2 d_model n_kv_heads d_head + 3 d_model d_ff + 3 d_model)
                                                       (catalog: trainable_params.per_layer, .total)
Paper:      "ShadowPEFT: Shadow Network for Parameter-Efficient Fine-Tuning", Xianming Li et al., 2026,
            arXiv 2604.19254.

Llama-family causal LMs only (every decoder block wrapped, as peft's default): the mirrored backbone is the
base model's own decoder class with shadow_layers blocks, and the formula is exact for Llama's layout. The
shadow state travels from block to block through a holder shared by the wrapped blocks: a forward pre-hook
on the model computes s^(0) from the input ids, each block reads and advances it, and a forward hook adds
the auxiliary loss when labels are given. Init: W_up = 0, so the injection adds nothing and the model starts
equal to the base model; W_down, T and G keep nn.Linear's init, the backbone its model class's init.
Not mergeable: the correction depends on the input through s.

Deviation from peft: peft gives every wrapped block its T and G, but the state the last block produces,
s^(L), is read by nothing (the auxiliary loss uses s^(0)), so the last block's T and G never receive a
gradient; they are left out here, and the catalog counts what trains. The oracle test freezes peft's copies.

Checked against: the paper §3 (Eq. 1-9: initial shadow state, discrepancy injection through a low-rank
bottleneck, gated update, auxiliary loss on the shadow's own output); peft 0.21.2 `peft/tuners/shadow`
(layers.py ShadowLayer.shadow_inject / shadow_update, model.py: mirrored backbone from the base decoder's
class with num_hidden_layers = shadow_num_hidden_layers or 1 and embed_tokens removed, s^(0) seeded before
the first wrapped block, auxiliary loss CE(lm_head(s^(0))) with shifted labels weighted by
auxiliary_loss_weight); the oracle test copies every parameter into peft's ShadowModel (task_type
CAUSAL_LM) on tiny Llama and compares logits, the loss with its auxiliary term, and gradients. Not done:
peft's shadow KV cache for generation (a forward with cached tokens is refused here), pretrained shadow
backbones and diffusion transformers. Numeric pin: test_shadow.py recomputes one block's injection and
gated update, and the auxiliary loss, from the equations.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls._core import CACHE_KWARGS, Wrapper, family, freeze_base


@dataclass
class ShadowConfig:
    r: int = 8                      # rank of the injection bottleneck; also the width of T and G
    shadow_alpha: float = 0.1       # strength of the correction added to the block input
    dropout: float = 0.2            # dropout on the discrepancy before W_down
    shadow_layers: int = 1          # decoder layers of the mirrored shadow backbone
    aux_loss_weight: float = 0.05   # weight of the shadow's own LM loss


class ShadowState:
    """The current shadow state s, shared by the wrapped blocks of one model (None: shadow path off)."""

    def __init__(self) -> None:
        self.s0: torch.Tensor | None = None  # (B, T, d_model), the backbone's output
        self.s: torch.Tensor | None = None   # (B, T, d_model), advanced block by block


def _mlp(d: int, r: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, r), nn.GELU(), nn.Linear(r, d))


class ShadowBlock(Wrapper):
    """A frozen decoder block with the shadow injection before it and the shadow update after it."""

    def __init__(self, base: nn.Module, d: int, config: ShadowConfig, state: ShadowState, last: bool) -> None:
        super().__init__()
        self.base, self.state, self.alpha = base, state, config.shadow_alpha
        self.down = nn.Linear(d, config.r, bias=False)              # W_down: d -> r
        self.up = nn.Linear(config.r, d, bias=False)                # W_up: r -> d
        nn.init.zeros_(self.up.weight)  # zero init: the injection is a no-op, so the model starts as the base model
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.last = last
        if not last:  # the state after the last block is never read, so that block has no update MLPs
            self.transform = _mlp(d, config.r)                      # T: candidate state
            self.gate = _mlp(d, config.r)                           # G: update gate (before the sigmoid)

    def inject(self, h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:  # (B, T, d) each
        return h + self.alpha * self.up(self.down(self.dropout(h - s)))

    def update(self, h_out: torch.Tensor, s: torch.Tensor) -> torch.Tensor:  # (B, T, d) each
        g = torch.sigmoid(self.gate(h_out))
        return (1 - g) * s + g * self.transform(h_out)

    def __getattr__(self, name: str) -> Any:  # the decoder loop may read block attributes (attention_type)
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base":
                raise
            return getattr(self.base, name)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        s = self.state.s
        if s is None:
            return self.base(hidden_states, *args, **kwargs)
        out = self.base(self.inject(hidden_states, s), *args, **kwargs)
        if not self.last:
            h_out = out[0] if isinstance(out, tuple) else out  # transformers 4.x blocks return tuples
            self.state.s = self.update(h_out, s)
        return out


class ShadowNetwork(nn.Module):
    """The shadow backbone (a mirrored decoder without its embedding table) and the model-level hooks."""

    def __init__(self, model: nn.Module, config: ShadowConfig, state: ShadowState) -> None:
        super().__init__()
        cfg = copy.deepcopy(model.model.config)
        cfg.num_hidden_layers = config.shadow_layers
        if getattr(cfg, "layer_types", None) is not None:  # per-layer lists sized for the full model
            cfg.layer_types = (list(cfg.layer_types) * config.shadow_layers)[:config.shadow_layers]
        self.backbone = type(model.model)(cfg)
        del self.backbone.embed_tokens  # fed the frozen base embeddings instead
        self.state = state
        self.aux_weight = config.aux_loss_weight
        self.embed = [model.get_input_embeddings()]   # lists: frozen base modules, not submodules of this one
        self.head = [model.get_output_embeddings()]

    def seed(self, module: nn.Module, args: tuple, kwargs: dict) -> None:  # forward pre-hook of the model
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            embeds = self.embed[0](input_ids)  # (B, T, d_model)
        if any(kwargs.get(n) is not None and kwargs[n].get_seq_length() > 0 for n in CACHE_KWARGS):
            raise NotImplementedError("ShadowPEFT here has no shadow KV cache: run whole sequences")
        out = self.backbone(inputs_embeds=embeds, attention_mask=kwargs.get("attention_mask"),
                            position_ids=kwargs.get("position_ids"), use_cache=False)
        self.state.s0 = self.state.s = out.last_hidden_state  # s^(0): (B, T, d_model)

    def add_aux_loss(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:  # forward hook
        labels, s0 = kwargs.get("labels"), self.state.s0
        self.state.s0 = self.state.s = None
        if labels is not None and getattr(output, "loss", None) is not None and self.aux_weight > 0:
            output.loss = output.loss + self.aux_weight * self.aux_loss(s0, labels)
        return output

    def aux_loss(self, s0: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.head[0](s0)[:, :-1]  # (B, T-1, vocab): position t predicts token t+1
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)


def apply(model: nn.Module, config: ShadowConfig) -> nn.Module:
    if family(model) != "llama" or model.get_output_embeddings() is None:
        raise ValueError(f"ShadowPEFT here mirrors a Llama-family causal LM's decoder; this is a "
                         f"{getattr(model.config, 'model_type', '?')} model")
    freeze_base(model)
    state = ShadowState()
    d = model.config.hidden_size
    layers = model.model.layers
    for i in range(len(layers)):
        layers[i] = ShadowBlock(layers[i], d, config, state, last=i == len(layers) - 1)
    model.shadow = ShadowNetwork(model, config, state)
    model.register_forward_pre_hook(model.shadow.seed, with_kwargs=True)
    model.register_forward_hook(model.shadow.add_aux_loss, with_kwargs=True)
    return model
