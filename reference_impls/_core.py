"""Shared plumbing for the reference implementations: targeting, freezing, counting, saving, merging.

Kept small on purpose; everything method-specific lives in the method's own file.

Targeting. A target is a module-name pattern matched as a suffix on dot-separated name components,
with `*` matching one component: "q_proj" matches "model.layers.0.self_attn.q_proj" but not
"model.layers.0.self_attn.xq_proj"; BERT's "layer.*.output.dense" matches the FFN output projection
but not "layer.0.attention.output.dense". A target may also be an abstract role (q, k, v, o, gate, up,
down), resolved through `ROLE_PATTERNS` for the model's architecture family (bert, t5, llama, gpt2, phi3:
`FAMILIES` maps model types to them; a decoder of an unlisted type is recognised by its module names).
On a fused projection (GPT-2's c_attn; Phi-3's qkv_proj and gate_up_proj) a role names its part of the
output, `Target.out_features`.

Deviation to know about: on T5 the roles q, k, v, o name the *self*-attention projections only, so that
every block has one attention and the catalog's per-layer formulas hold; name "EncDecAttention.k" etc.
explicitly to reach the decoder's cross-attention.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

ROLES = ("q", "k", "v", "o", "gate", "up", "down")

#: model_type (from the HF config) -> architecture family. A decoder of another model_type whose blocks
#: use one family's module names is recognised from them (`family` with a model); this table is the fast
#: path, and the only one for a bare config.
FAMILIES = {"bert": "bert", "roberta": "bert", "t5": "t5", "mt5": "t5", "gpt2": "gpt2",
            # LLaMA-style: self_attn.{q,k,v,o}_proj and mlp.{gate,up,down}_proj in every block (Qwen2 adds
            # q/k/v biases; Qwen3, Gemma 3 and OLMo-2 add q/k norms; Gemma 2/3 extra norms and soft-capping)
            "llama": "llama", "mistral": "llama", "qwen2": "llama", "qwen3": "llama", "gemma": "llama",
            "gemma2": "llama", "gemma3_text": "llama", "olmo2": "llama",
            "phi3": "phi3"}

#: family -> role -> name patterns (alternatives); a role a family lacks (BERT has no gate) is absent.
ROLE_PATTERNS: dict[str, dict[str, tuple[str, ...]]] = {
    "bert": {"q": ("attention.self.query",), "k": ("attention.self.key",), "v": ("attention.self.value",),
             "o": ("attention.output.dense",), "up": ("intermediate.dense",),
             "down": ("layer.*.output.dense",)},  # not attention.output.dense
    "t5": {"q": ("SelfAttention.q",), "k": ("SelfAttention.k",), "v": ("SelfAttention.v",),
           "o": ("SelfAttention.o",), "gate": ("DenseReluDense.wi_0",),
           "up": ("DenseReluDense.wi", "DenseReluDense.wi_1"), "down": ("DenseReluDense.wo",)},
    "llama": {"q": ("self_attn.q_proj",), "k": ("self_attn.k_proj",), "v": ("self_attn.v_proj",),
              "o": ("self_attn.o_proj",), "gate": ("mlp.gate_proj",), "up": ("mlp.up_proj",),
              "down": ("mlp.down_proj",)},
    # GPT-2 computes q, k and v with one fused Conv1D (d_out = 3 * d_model), in that order
    "gpt2": {"q": ("attn.c_attn",), "k": ("attn.c_attn",), "v": ("attn.c_attn",), "o": ("attn.c_proj",),
             "up": ("mlp.c_fc",), "down": ("mlp.c_proj",)},
    # Phi-3 fuses q, k, v into qkv_proj and gate, up into gate_up_proj
    "phi3": {"q": ("self_attn.qkv_proj",), "k": ("self_attn.qkv_proj",), "v": ("self_attn.qkv_proj",),
             "o": ("self_attn.o_proj",), "gate": ("mlp.gate_up_proj",), "up": ("mlp.gate_up_proj",),
             "down": ("mlp.down_proj",)},
}
#: family -> fused module pattern -> its roles in output order, each with the arch_symbols product that
#: gives its width: GPT-2's c_attn is (q | k | v), d_model each; Phi-3's qkv_proj is
#: (q: n_heads*d_head | k: n_kv_heads*d_head | v: n_kv_heads*d_head), its gate_up_proj (gate: d_ff | up: d_ff)
FUSED: dict[str, dict[str, tuple[tuple[str, tuple[str, ...]], ...]]] = {
    "gpt2": {"attn.c_attn": (("q", ("d_model",)), ("k", ("d_model",)), ("v", ("d_model",)))},
    "phi3": {"self_attn.qkv_proj": (("q", ("n_heads", "d_head")), ("k", ("n_kv_heads", "d_head")),
                                    ("v", ("n_kv_heads", "d_head"))),
             "mlp.gate_up_proj": (("gate", ("d_ff",)), ("up", ("d_ff",)))},
}


# -- architecture --------------------------------------------------------------------------------
def family(model_or_config: Any) -> str:
    """The architecture family: from the config's model_type, else (given a model) from its module names."""
    config = getattr(model_or_config, "config", model_or_config)
    fam = FAMILIES.get(config.model_type)
    if fam is None and isinstance(model_or_config, nn.Module):
        fam = _family_from_names(model_or_config)
    if fam is None:
        raise ValueError(f"no role table for model_type '{config.model_type}' and its module names match none; "
                         f"supported: {', '.join(sorted(FAMILIES))}")
    return fam


def _family_from_names(model: nn.Module) -> str | None:
    """The decoder family (llama, phi3) whose q, o and down patterns all name modules of `model`, if one does;
    the encoder families are left to the table, whose names are too generic to guess from."""
    names = [name for name, _ in model.named_modules()]
    for fam in ("llama", "phi3"):
        roles = ROLE_PATTERNS[fam]
        if all(any(matches(n, p) for n in names for p in roles[r]) for r in ("q", "o", "down")):
            return fam
    return None


def arch_symbols(config: Any) -> dict[str, int]:
    """The catalog's architecture symbols for an HF config (see peftkb.formula.ARCH_SYMBOLS)."""
    fam = family(config)
    if fam == "t5":
        # every encoder and decoder block counts as a layer
        n_layers = config.num_layers + config.num_decoder_layers
        d_model, d_ff, n_heads, d_head = config.d_model, config.d_ff, config.num_heads, config.d_kv
        n_kv_heads = n_heads
    elif fam == "gpt2":
        n_layers, d_model, n_heads = config.n_layer, config.n_embd, config.n_head
        d_ff = config.n_inner or 4 * d_model
        d_head, n_kv_heads = d_model // n_heads, n_heads
    else:  # bert, llama, phi3
        n_layers, d_model, d_ff = config.num_hidden_layers, config.hidden_size, config.intermediate_size
        n_heads = config.num_attention_heads
        d_head = getattr(config, "head_dim", None) or d_model // n_heads
        n_kv_heads = getattr(config, "num_key_value_heads", None) or n_heads
    return {"n_layers": n_layers, "d_model": d_model, "d_ff": d_ff, "n_heads": n_heads, "d_head": d_head,
            "n_kv_heads": n_kv_heads, "vocab_size": config.vocab_size}


#: names under which transformers' modules take a key/value cache: `cache` from 5.2x on (the older names
#: still accepted, with a warning, but ignored when the head class also passes `cache`), before that
#: `past_key_values`, and `past_key_value` in attention layers of 4.x
CACHE_KWARGS = ("cache", "past_key_values", "past_key_value")


def cache_kwarg(module: nn.Module) -> str:
    """The name of the key/value cache argument of `module.forward` on the installed transformers."""
    params = inspect.signature(module.forward).parameters  # follows functools.wraps to the real forward
    for name in CACHE_KWARGS:
        if name in params:
            return name
    raise ValueError(f"{type(module).__name__}.forward takes no key/value cache argument")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() skips tied duplicates


def n_bias(model: nn.Module) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if name.split(".")[-1] == "bias")


# -- targeting -----------------------------------------------------------------------------------
def matches(name: str, pattern: str) -> bool:
    """Suffix match on dot-separated components; `*` matches any one component."""
    parts, want = name.split("."), pattern.split(".")
    if len(want) > len(parts):
        return False
    return all(w in ("*", p) for w, p in zip(want, parts[-len(want):]))


@dataclass
class Target:
    name: str                  # full module name in the model
    module: nn.Module
    roles: tuple[str, ...]     # the roles that resolved here ("" for an explicit name)
    out_features: slice        # the part of the output the roles cover (a slice of GPT-2's fused qkv)


def find_targets(model: nn.Module, targets: Iterable[str]) -> list[Target]:
    """Resolve roles and name patterns to modules, in model order; each module appears once."""
    fam = family(model)
    patterns: list[tuple[str, str]] = []  # (pattern, role or "")
    for t in targets:
        if t in ROLES:
            patterns += [(p, t) for p in ROLE_PATTERNS[fam].get(t, ())]
        else:
            patterns.append((t, ""))
    found: list[Target] = []
    for name, module in model.named_modules():
        roles = tuple(r for p, r in patterns if matches(name, p))
        if not roles:
            continue
        out = slice(0, linear_dims(module)[1])
        if "" not in roles:
            out = _fused_slice(model, fam, name, roles) or out
        found.append(Target(name, module, roles, out))
    if not found:
        raise ValueError(f"no module of this {fam} model matches {list(targets)}")
    return found


def _fused_slice(model: nn.Module, fam: str, name: str, roles: tuple[str, ...]) -> slice | None:
    """For a fused module (GPT-2's c_attn, Phi-3's qkv_proj and gate_up_proj): the covering range of the
    output features that belong to `roles`; None for an ordinary module."""
    for pattern, parts in FUSED.get(fam, {}).items():
        if matches(name, pattern):
            s = arch_symbols(model.config)
            bounds, start = {}, 0
            for role, width in parts:  # (role, symbols whose product is its width), in output order
                stop = start + math.prod(s[w] for w in width)
                bounds[role] = (start, stop)
                start = stop
            picked = [bounds[r] for r in roles]
            return slice(min(b[0] for b in picked), max(b[1] for b in picked))
    return None


def target_dims(model: nn.Module, targets: Iterable[str]) -> list[tuple[int, int]]:
    """(d_in, d_out) of every targeted module, for evaluating per_target formulas."""
    return [linear_dims(t.module) for t in find_targets(model, targets)]


def linear_dims(module: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of a linear layer; HF's Conv1D stores its weight transposed, as (d_in, d_out)."""
    if isinstance(module, Conv1D):
        d_in, d_out = module.weight.shape
        return d_in, d_out
    return module.in_features, module.out_features


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight as a (d_out, d_in) view (in-place edits reach the module's own tensor)."""
    return module.weight.T if isinstance(module, Conv1D) else module.weight


class Wrapper(nn.Module):
    """Base class of modules that wrap a layer as `self.base`. Exposes the base layer's weight, since
    some HF code reads it through the wrapper (T5 checks `wo.weight.dtype`)."""

    base: nn.Module

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight


class QuantizedLinear(nn.Module):
    """A frozen linear layer whose weight is stored in some quantized code (QLoRA's NF4, QA-LoRA's INT,
    LoftQ's NormalFloat). Subclasses store the code and implement dequantize(dtype) -> (d_out, d_in);
    this keeps the dimensions and a frozen copy of the bias, and computes x Wᵀ + b from the dequantized W."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.in_features, self.out_features = linear_dims(base)
        self.bias = None if base.bias is None else nn.Parameter(base.bias.detach().clone(), requires_grad=False)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:  # (d_out, d_in)
        raise NotImplementedError

    @property
    def weight(self) -> torch.Tensor:  # HF code that reads .weight (T5's wo) sees the dequantized weight
        return self.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_in)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantize(x.dtype), bias)  # (B, T, d_out)


class AdditiveUpdate(Wrapper):
    """A wrapper whose method adds an update ΔW to the base weight: h = base(x) + ΔW x, ΔW = delta_weight().

    merge() folds ΔW into the base weight, unmerge() takes it out again; `forward` must return base(x)
    alone while `self.merged` is set. LoRA and its relatives inherit this instead of repeating it.
    """

    merged: bool = False

    def delta_weight(self) -> torch.Tensor:  # (d_out, d_in)
        raise NotImplementedError

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            linear_weight(self.base).add_(self.delta_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            linear_weight(self.base).sub_(self.delta_weight())
            self.merged = False


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def replace_modules(model: nn.Module, targets: Iterable[str],
                    wrap: Callable[[Target], nn.Module]) -> list[nn.Module]:
    """Replace every targeted module by `wrap(target)`; returns the new modules."""
    new = []
    for t in find_targets(model, targets):
        module = wrap(t)
        replace_module(model, t.name, module)
        new.append(module)
    return new


# -- freezing, counting, saving ------------------------------------------------------------------
def freeze_base(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def save_trainable(model: nn.Module, path: str | Path) -> None:
    """Write only the trained parameters (safetensors)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in trainable_state(model).items()}, str(path))


def load_trainable(model: nn.Module, path: str | Path) -> None:
    """Load parameters saved by `save_trainable` into a model prepared with the same `apply`."""
    from safetensors.torch import load_file

    saved = load_file(str(path))
    expected = set(trainable_state(model))
    if set(saved) != expected:
        raise ValueError(f"saved tensors do not match this model's trainable parameters: "
                         f"missing {sorted(expected - set(saved))}, unexpected {sorted(set(saved) - expected)}")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor)


def _mergeable(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if m is not model and callable(getattr(m, "merge", None))]


def merge(model: nn.Module) -> nn.Module:
    """Fold every adapter that can be folded into its base weight."""
    for m in _mergeable(model):
        m.merge()
    return model


def unmerge(model: nn.Module) -> nn.Module:
    for m in _mergeable(model):
        m.unmerge()
    return model


# -- tiny models and a synthetic task (tests, `peftkb run`, benchmarks) ------------------------
TINY_MODELS = ("tiny-bert", "tiny-t5", "tiny-llama", "tiny-gpt2")


def tiny_model(name: str, seed: int = 0, **overrides: Any) -> nn.Module:
    """A randomly initialised model with an LM head; `overrides` change config fields. No downloads."""
    import transformers as tf

    # initializer_range 0.2 (HF's default is 0.02): at width 32 a 0.02 init gives near-constant logits,
    # on which a PEFT method's small update barely registers; T5's own init is already wide enough
    width = dict(vocab_size=100, max_position_embeddings=128, initializer_range=0.2)
    if name == "tiny-bert":
        config = tf.BertConfig(**width, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        cls = tf.BertForMaskedLM
    elif name == "tiny-t5":
        config = tf.T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                             num_heads=4, dropout_rate=0.0, feed_forward_proj="gated-gelu",
                             decoder_start_token_id=0, pad_token_id=0)
        cls = tf.T5ForConditionalGeneration
    elif name == "tiny-llama":
        config = tf.LlamaConfig(**width, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2)  # GQA: 2 kv heads
        cls = tf.LlamaForCausalLM
    elif name == "tiny-gpt2":
        config = tf.GPT2Config(vocab_size=100, n_positions=128, initializer_range=0.2, n_embd=32, n_layer=2, n_head=4,
                               resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        cls = tf.GPT2LMHeadModel
    else:
        raise ValueError(f"unknown tiny model '{name}'; choose from {', '.join(TINY_MODELS)}")
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    return cls(config).eval()


def synthetic_batch(model: nn.Module, batch_size: int = 4, seq_len: int = 12, seed: int = 0,
                    device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Arithmetic progressions mod vocab (x_t = a + t*b): the next token is predictable from the last two.

    Causal LMs and BERT (which here reconstructs its input) get labels = input_ids; T5 maps a sequence to
    the same sequence shifted by one step.
    """
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    a = torch.randint(1, vocab, (batch_size, 1), generator=g)
    b = torch.randint(1, 4, (batch_size, 1), generator=g)
    t = torch.arange(seq_len + 1)
    seq = 1 + (a + t * b) % (vocab - 1)  # (B, T+1), token 0 stays free as pad / decoder start
    batch = {"input_ids": seq[:, :-1].contiguous(), "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long)}
    batch["labels"] = (seq[:, 1:] if family(model) == "t5" else seq[:, :-1]).contiguous()
    return {k: v.to(device) for k, v in batch.items()}


def train(model: nn.Module, batch: dict[str, torch.Tensor], steps: int, lr: float = 1e-2, *,
          extra_loss: Callable[[], torch.Tensor] | None = None,
          after_step: Callable[[int], None] | None = None,
          on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Adam on the trainable parameters, one fixed batch; returns the task loss before every step.

    `extra_loss()` adds a regulariser (AdaLoRA's orthogonality term); `after_step(step)` runs after the
    optimizer step while the gradients are still there (AdaLoRA's rank allocation).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr) if params else None
    model.train()
    losses = []
    for step in range(steps):
        loss = model(**batch).loss
        losses.append(loss.item())
        if opt is not None:
            opt.zero_grad(set_to_none=True)
            (loss + extra_loss() if extra_loss else loss).backward()
            opt.step()
            if after_step:
                after_step(step)
        if on_step:
            on_step(step, losses[-1])
    model.eval()
    return losses


def kaiming_uniform_(weight: torch.Tensor) -> torch.Tensor:
    """nn.Linear's default init (the one LoRA's A and adapters' down-projections use)."""
    return nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
