"""Prefix tuning: trainable keys and values prepended to every attention layer.

Equation:   head_i = Attention(x W_q^i, [P_k^i; x W_k^i], [P_v^i; x W_v^i])   in every layer,
            P_k, P_v ∈ R^{n_virtual_tokens × n_kv_heads·d_head} per layer, trained; the model frozen.
            During training  P = MLP(P'),  P' ∈ R^{n_virtual_tokens × d_model},
            MLP = Linear(d_model, projection_hidden) → tanh → Linear(projection_hidden, n_layers·2·n_kv_heads·d_head)
Trainable:  n_layers * 2 * n_virtual_tokens * n_kv_heads * d_head   after training (catalog: total);
            while the MLP produces the prefix, instead  n_virtual_tokens*d_model + d_model*projection_hidden
            + projection_hidden + projection_hidden*n_layers*2*n_kv_heads*d_head + n_layers*2*n_kv_heads*d_head
            (P' and the MLP's weights and biases; the prefix itself is then an output, not a parameter)
Paper:      "Prefix-Tuning: Optimizing Continuous Prompts for Generation", Xiang Lisa Li and Percy Liang,
            2021 (ACL-IJCNLP 2021), arXiv 2101.00190.

The reparameterisation MLP only stabilises optimisation (paper §4.3); `drop_projection(model)` evaluates
it once, keeps the resulting prefix as a plain parameter and deletes the MLP, leaving outputs unchanged.

How the prefix reaches attention. Decoder-only models and BERT-style encoders: as a pre-filled key/value
cache (`past_key_values`), the route peft takes. A forward pre-hook on the backbone (`model.base_model`:
BertModel, LlamaModel, GPT2Model) builds a fresh cache on every call (the model appends the real keys to
it) and prepends ones to the attention mask, so any head class works unchanged. Consequences, as in peft:
the real tokens' positions start at n_virtual_tokens, and with grouped-query attention the prefix has
n_kv_heads heads.
T5, whose encoder takes no cache: a pre-hook on every self-attention (encoder and decoder blocks, which
are T5's n_layers) hands it, as its cache argument, an object whose update() puts the layer's prefix rows
in front of the projected keys and values, (B, H, T, hs) -> (B, H, P + T, hs); the relative position
bias, which T5 computes in its first block and adds to every score, and the attention mask get P columns
in front (zero bias, never masked): prefix slots carry no position, real tokens keep their relative
positions. The decoder's cross-attention is left as it is.
Not supported: generation with a cache of its own (the hook replaces it). Not mergeable: the prefix is
attended to, not added to a weight.

Checked against: peft 0.21.2 (installed) tuners/prefix_tuning/model.py PrefixEncoder (nn.Embedding of
the virtual tokens, then Linear(d_model, hidden) → Tanh → Linear(hidden, n_layers·2·kv width) when
prefix_projection is set, the plain embedding otherwise) and its past_key_values route; the oracle tests
compare outputs with PeftModel on decoder-only models and on BERT with the MLP. The T5 route is pinned
by an explicit recomputation (attention over [P_k; K], [P_v; V] with the zero-bias prefix columns). The
paper was read through its abstract and secondary summaries of §4.3 (the MLP reparameterisation);
§4.3's text itself was not re-read in this pass. The authors' code (github.com/XiangLi1999/PrefixTuning
@6519d30e) builds the same MLP (gpt2/train_control.py control_trans: Linear(n_embd, mid_dim), Tanh,
Linear(mid_dim, n_layer · 2 · n_embd)) with gpt2/train_e2e.py defaults preseqlen 10 and mid_dim 512.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import transformers
from torch import nn

from reference_impls._core import CACHE_KWARGS, arch_symbols, cache_kwarg, family, freeze_base


@dataclass
class PrefixTuningConfig:
    n_virtual_tokens: int = 10       # prefix length: key/value vectors per layer (the authors' --preseqlen)
    prefix_projection: bool = True   # produce the prefix with the reparameterisation MLP while training
    projection_hidden: int = 512     # hidden size of that MLP


class PrefixEncoder(nn.Module):
    """Holds the prefix (directly, or as P' plus the MLP) and turns it into a key/value cache."""

    def __init__(self, n_layers: int, n_kv_heads: int, d_head: int, d_model: int, config: PrefixTuningConfig) -> None:
        super().__init__()
        self.n_layers, self.n_kv_heads, self.d_head = n_layers, n_kv_heads, d_head
        self.n_virtual_tokens = config.n_virtual_tokens
        P, width = config.n_virtual_tokens, n_layers * 2 * n_kv_heads * d_head
        if config.prefix_projection:
            self.P_prime = nn.Parameter(torch.randn(P, d_model))  # (P, d_model), like nn.Embedding's init
            self.mlp = nn.Sequential(nn.Linear(d_model, config.projection_hidden), nn.Tanh(),
                                     nn.Linear(config.projection_hidden, width))
            self.register_parameter("prefix", None)  # produced by the MLP until drop_projection()
        else:
            self.prefix = nn.Parameter(torch.randn(P, width))  # (P, n_layers * 2 * n_kv_heads * d_head)

    def kv(self) -> torch.Tensor:
        prefix = self.prefix if self.prefix is not None else self.mlp(self.P_prime)  # (P, L*2*n_kv*d_head)
        P = prefix.shape[0]
        # columns are ordered (layer, key|value, head, d_head), peft's layout
        return prefix.view(P, self.n_layers * 2, self.n_kv_heads, self.d_head).permute(1, 2, 0, 3)  # (2L, n_kv, P, hs)

    def cache(self, batch_size: int):
        from transformers import DynamicCache

        kv = self.kv()
        cache = DynamicCache()
        for layer in range(self.n_layers):
            k = kv[2 * layer].expand(batch_size, -1, -1, -1)      # (B, n_kv, P, hs)
            v = kv[2 * layer + 1].expand(batch_size, -1, -1, -1)  # (B, n_kv, P, hs)
            cache.update(k, v, layer)
        return cache

    def inject(self, backbone: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Forward pre-hook on the backbone: hand it the prefix as its key/value cache."""
        x = kwargs.get("input_ids", args[0] if args else None)
        B = (x if x is not None else kwargs["inputs_embeds"]).shape[0]
        mask = kwargs.get("attention_mask")
        if mask is not None:
            kwargs["attention_mask"] = torch.cat([mask.new_ones(B, self.n_virtual_tokens), mask], dim=1)  # (B, P+T)
        for name in CACHE_KWARGS:  # the head class passes its own (empty) cache under one of these names
            kwargs.pop(name, None)
        kwargs[cache_kwarg(backbone)] = self.cache(B)
        return args, kwargs

    @torch.no_grad()
    def drop_projection(self) -> None:
        if self.prefix is None:
            self.prefix = nn.Parameter(self.mlp(self.P_prime).detach())
            del self.mlp, self.P_prime


def drop_projection(model: nn.Module) -> nn.Module:
    """After training: keep the prefix the MLP produces, delete the MLP (outputs stay the same)."""
    for m in model.modules():
        if isinstance(m, PrefixEncoder):
            m.drop_projection()
    return model


# -- T5: the prefix enters through each self-attention's cache argument ------------------------------
class PrefixedKV:
    """Stands in for the key/value cache of one T5 self-attention for one forward: update() puts the
    layer's prefix rows in front of the keys and values the attention has just projected. No real cache
    sits behind it (the docstring's "not supported: generation")."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k, self.v = k, v  # (n_kv, P, hs) each

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0  # no past tokens: the real tokens keep their positions

    def update(self, keys: torch.Tensor, values: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        B = keys.shape[0]  # keys, values: (B, n_heads, T, hs)
        k = torch.cat([self.k.to(keys.dtype).expand(B, -1, -1, -1), keys], dim=2)      # (B, n_heads, P + T, hs)
        v = torch.cat([self.v.to(values.dtype).expand(B, -1, -1, -1), values], dim=2)  # (B, n_heads, P + T, hs)
        return k, v


# transformers 4.x adds the attention mask into T5's position bias; 5.x hands the mask to attention apart
_MASK_IN_POSITION_BIAS = int(transformers.__version__.split(".")[0]) < 5


class T5SelfAttentionPrefix:
    """Forward pre-hook for one T5 self-attention (an object, so copy.deepcopy rebinds it to the copy).

    Hands the attention a PrefixedKV with its layer's rows, gives the P prefix columns zero position bias
    (computed here, as T5 would for the real tokens, in the first block of a stack; later blocks reuse it)
    and never masks them: (B, 1, T or 1, T) masks get P columns in front. Without a mask, one is built,
    since attention would otherwise assume as many keys as queries (causal in the decoder)."""

    def __init__(self, encoder: nn.Module, layer: int, cache_name: str) -> None:
        self.encoder, self.layer, self.cache_name = encoder, layer, cache_name

    def __call__(self, attention: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        kv = self.encoder.kv_now  # (2L, n_kv, P, hs), set by the model's pre-hook once per forward
        P = kv.shape[2]
        hidden = kwargs.get("hidden_states", args[0] if args else None)  # (B, T, d_model)
        T = hidden.shape[1]
        kwargs[self.cache_name] = PrefixedKV(kv[2 * self.layer], kv[2 * self.layer + 1])
        mask = kwargs.get("mask")
        if kwargs.get("position_bias") is None and attention.has_relative_attention_bias:
            bias = attention.compute_bias(T, T, device=hidden.device)  # (1, n_heads, T, T)
            if _MASK_IN_POSITION_BIAS and mask is not None:
                bias = bias + mask[:, :, :, :T]  # (B, n_heads, T, T)
            kwargs["position_bias"] = F.pad(bias, (P, 0))  # (B, n_heads, T, P + T)
        if _MASK_IN_POSITION_BIAS:
            return args, kwargs  # 4.x reads the mask only through the position bias
        if mask is None:
            causal = torch.ones(T, T, dtype=torch.bool, device=hidden.device)
            mask = (causal.tril() if attention.is_decoder else causal)[None, None]  # (1, 1, T, T)
        if mask.dtype == torch.bool:
            kwargs["mask"] = F.pad(mask, (P, 0), value=True)  # (B, 1, T or 1, P + T)
        else:  # additive float mask: 0 where attended
            kwargs["mask"] = F.pad(mask, (P, 0), value=0.0)
        return args, kwargs


class SharePrefix:
    """Forward pre-hook on the model: evaluate the prefix (the MLP) once per forward, not once per layer."""

    def __init__(self, encoder: nn.Module) -> None:
        self.encoder = encoder

    def __call__(self, model: nn.Module, args: tuple) -> None:
        self.encoder.kv_now = self.encoder.kv()


def _add_t5_prefix(model: nn.Module, encoder: nn.Module) -> None:
    attentions = [m for name, m in model.named_modules() if name.endswith(".SelfAttention")]  # encoder, then decoder
    assert len(attentions) == encoder.n_layers, "expected one self-attention per T5 block"
    for layer, attention in enumerate(attentions):
        hook = T5SelfAttentionPrefix(encoder, layer, cache_kwarg(attention))
        attention.register_forward_pre_hook(hook, with_kwargs=True)
    model.register_forward_pre_hook(SharePrefix(encoder))


def attach_prefix(model: nn.Module, encoder: PrefixEncoder) -> None:
    """Route `encoder`'s keys and values into every attention layer of `model` (any PrefixEncoder-like
    module with kv(), cache() and inject(), such as ProPETL's masked prefix)."""
    if family(model) == "t5":
        _add_t5_prefix(model, encoder)
    else:
        model.base_model.register_forward_pre_hook(encoder.inject, with_kwargs=True)


def add_prefix(model: nn.Module, config: PrefixTuningConfig) -> PrefixEncoder:
    """Attach a PrefixEncoder as `model.prefix_encoder` and hook it into the model's forward."""
    s = arch_symbols(model.config)
    model.prefix_encoder = PrefixEncoder(s["n_layers"], s["n_kv_heads"], s["d_head"], s["d_model"], config)
    attach_prefix(model, model.prefix_encoder)
    return model.prefix_encoder


def apply(model: nn.Module, config: PrefixTuningConfig) -> nn.Module:
    freeze_base(model)
    add_prefix(model, config)
    return model
