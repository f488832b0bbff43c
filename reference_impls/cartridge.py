"""Cartridges: a trained key/value cache of p virtual tokens that stands in for a long corpus in the context.

Equation:   head_i = Attention(x W_q^i, [Z_k^i; x W_k^i], [Z_v^i; x W_v^i])   in every layer,
            Z_k, Z_v ∈ R^{p × n_kv_heads·d_head} per layer, trained directly (no reparameterisation), the model frozen;
            init: Z = the key/value cache of the model reading the corpus's first p tokens;
            the first n_frozen_tokens of the p stay at their init (an attention sink).
Trainable:  n_layers * 2 * (n_virtual_tokens - n_frozen_tokens) * n_kv_heads * d_head   (catalog: trainable_params.per_layer)
Paper:      "Cartridges: Lightweight and general-purpose long context representations via self-study",
            Sabri Eyuboglu et al., 2026 (ICLR 2026), arXiv 2506.06266.

A cartridge is served exactly like a prefix-tuning prefix, as a pre-filled key/value cache
(reference_impls/prefix_tuning.py's route: a pre-hook on the backbone hands it to the model on every call,
the attention mask gets ones for it and the real tokens' positions start at p). What differs is the
parameterisation and the init: the cache itself is the parameter, and it starts as the cache the frozen
model produces when it reads the first p tokens of the corpus (the paper's recommended init), so that at init
the model answers exactly as if those tokens stood in its context. `init_token_ids` are those tokens; left
empty they are 0, 1, ..., p-1, a stand-in for a real corpus. Because the init is a function of the model
and the tokens, the frozen sink tokens are rebuilt, not saved, when a trained cartridge is loaded.

The paper trains cartridges with self-study (context distillation on synthetic conversations about the
corpus); that data recipe is outside this file, which trains on whatever loss the model is given.
Causal decoders only (LLaMA, GPT-2): the init is a decoder's cache. Not mergeable: the cache is attended
to, not added to a weight.

Checked against: the paper (the cache as the parameter, init from the first tokens of the corpus,
the frozen first token); peft 0.21.2 `peft/tuners/cartridge/model.py` (CartridgeEncoder: frozen and
trainable rows in prefix tuning's flattened layout (p, n_layers · 2 · n_kv_heads · d_head)) and
`utils.py` (initialisation from a prefill's cache); tests/reference_impls/test_cartridge.py compares
outputs, gradients and the trainable count with peft on tiny Llama.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._core import arch_symbols, family, freeze_base
from reference_impls.prefix_tuning import PrefixEncoder, attach_prefix


@dataclass
class CartridgeConfig:
    n_virtual_tokens: int = 20          # cartridge length p (peft requires it; 20 is the catalog's placeholder)
    n_frozen_tokens: int = 1            # leading virtual tokens kept at their init (attention sink)
    init_token_ids: tuple[int, ...] = ()  # the corpus's first p tokens, whose cache is the init; () -> 0..p-1


@torch.no_grad()
def prefill_cache(model: nn.Module, token_ids: torch.Tensor) -> torch.Tensor:
    """The model's key/value cache after reading `token_ids`, flattened to peft's prefix layout.
    (p,) -> (p, n_layers * 2 * n_kv_heads * d_head), columns ordered (layer, key|value, head, d_head)"""
    cache = model(input_ids=token_ids[None], use_cache=True).past_key_values
    kv = torch.stack([t[0] for layer in cache.layers for t in (layer.keys, layer.values)])  # (2L, n_kv, p, hs)
    return kv.permute(2, 0, 1, 3).reshape(len(token_ids), -1)  # (p, 2L * n_kv * hs)


class Cartridge(PrefixEncoder):
    """The cache as parameters: frozen leading rows (a buffer) and trainable rows, in peft's layout."""

    def __init__(self, n_layers: int, n_kv_heads: int, d_head: int, init: torch.Tensor, n_frozen: int) -> None:
        nn.Module.__init__(self)  # PrefixEncoder.__init__ builds a reparameterised prefix; this one has none
        p = init.shape[0]
        if not 0 <= n_frozen <= p:
            raise ValueError(f"n_frozen_tokens must be in 0..n_virtual_tokens ({p}), got {n_frozen}")
        self.n_layers, self.n_kv_heads, self.d_head, self.n_virtual_tokens = n_layers, n_kv_heads, d_head, p
        self.register_buffer("frozen", init[:n_frozen].clone())             # (n_frozen, 2L * n_kv * hs)
        self.trainable = nn.Parameter(init[n_frozen:].clone())              # (p - n_frozen, 2L * n_kv * hs)

    def kv(self) -> torch.Tensor:
        prefix = torch.cat([self.frozen, self.trainable])  # (p, 2L * n_kv * hs)
        return prefix.view(self.n_virtual_tokens, self.n_layers * 2, self.n_kv_heads, self.d_head
                           ).permute(1, 2, 0, 3)  # (2L, n_kv, p, hs)

    def drop_projection(self) -> None:  # nothing to drop: the cache is the parameter
        pass


def apply(model: nn.Module, config: CartridgeConfig) -> nn.Module:
    if family(model) not in ("llama", "gpt2"):
        raise ValueError(f"a cartridge is initialised from a causal decoder's key/value cache; this is a "
                         f"{family(model)} model")
    p, vocab = config.n_virtual_tokens, model.config.vocab_size
    ids = torch.tensor(config.init_token_ids or range(p))
    if len(ids) != p or ids.min() < 0 or ids.max() >= vocab:
        raise ValueError(f"init_token_ids must be {p} token ids in 0..{vocab - 1}")
    freeze_base(model)
    s = arch_symbols(model.config)
    init = prefill_cache(model, ids)
    model.cartridge = Cartridge(s["n_layers"], s["n_kv_heads"], s["d_head"], init, config.n_frozen_tokens)
    attach_prefix(model, model.cartridge)
    return model
