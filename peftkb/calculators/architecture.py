"""Architecture symbols, a parameter table and a linear-module inventory from an HF `config.json`, without torch.

`architecture_from_config(cfg)` reads a Hugging Face config dict of one of the families in `FAMILIES` and
returns an `Architecture`:

- the shared formula symbols (`peftkb.formula.ARCH_SYMBOLS`): n_layers, d_model, d_ff, n_heads, d_head,
  n_kv_heads, vocab_size, n_params, n_bias;
- `params`: every parameter tensor of the counted model class as `(name, numel)`, named exactly as
  `model.named_parameters()` names them (tied tensors appear once, under their first name);
- `modules`: every linear layer (`nn.Linear`, or transformers' `Conv1D` for GPT-2) with its full module name,
  its role among q, k, v, o, up, gate, down (none for lm_head and BERT's pooler), d_in, d_out and bias.

Which class is counted (`Architecture.head_class`):

    bert, roberta            BertModel / RobertaModel with the pooler, no task head (heads vary by task)
    t5                       T5ForConditionalGeneration (lm_head tied to the shared embedding: see below)
    gpt2                     GPT2LMHeadModel
    llama, mistral, qwen2,   <Family>ForCausalLM; lm_head counted when tie_word_embeddings is false
    qwen3, gemma2,           (Gemma 3 text-only checkpoints, model_type gemma3_text: Gemma3ForCausalLM;
    gemma3_text, phi3,        the multimodal gemma3 configs with a vision tower are not supported)
    olmo2, falcon

Choices that a reader of a breakdown should know:

- **Fused projections.** GPT-2's `attn.c_attn` (d_model -> 3*d_model) and Falcon's
  `self_attention.query_key_value` (d_model -> (n_heads + 2*n_kv_heads)*d_head) hold q, k and v in one
  module, as peft sees them: targeting any of q/k/v selects the whole fused module once, with its full
  d_out. This is what `LoraConfig(target_modules=["c_attn"])` trains.
- **Phi-3** fuses q/k/v into `self_attn.qkv_proj` (d_model -> (n_heads + 2*n_kv_heads)*d_head, roles q/k/v)
  and gate/up into `mlp.gate_up_proj` (d_model -> 2*d_ff, roles gate/up), selected once like GPT-2's c_attn.
- **Per-family details** the table follows: Qwen2 has q/k/v biases and no o bias; Qwen3 and Gemma 3 add
  per-head RMSNorms `q_norm`/`k_norm` (d_head) and OLMo-2 full-width ones (n_heads*d_head, n_kv_heads*d_head);
  Gemma 2/3 have four norms per block, OLMo-2 two after the sublayers and none before; head_dim defaults to
  the config class's (Gemma 256, Qwen3 128), not d_model / n_heads.
- **T5 cross-attention.** The decoder's `EncDecAttention.{q,k,v,o}` keep the roles q/k/v/o and are flagged
  `cross=True`; a role target selects them too, as peft's name matching (`target_modules=["q", "v"]`) does.
- **n_layers** is the number of Transformer blocks: num_hidden_layers, or for T5 encoder blocks + decoder
  blocks (num_layers + num_decoder_layers). A `per_layer` formula is therefore counted once per block of
  either stack.
- **T5's lm_head.** transformers 5 ties it to `shared` whatever the config says (T5Config keeps
  `tie_word_embeddings: false` of T5 v1.1 / Flan-T5 only as "do not rescale the decoder output" and forces
  the tie), so a T5 v1.1 config counts one vocab x d_model matrix less than its published size. With a 4.x
  transformers installed (read from the package metadata, nothing imported) an untied config keeps its own
  lm_head, as 4.x builds it.
- Missing config keys take the default of the transformers config class of the family (checked by tests).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftkb.errors import NotFoundError, UsageError, did_you_mean

ROLES = ("q", "k", "v", "o", "up", "gate", "down")
MAX_CONFIG_BYTES = 1_000_000   # real config.json files are a few KB (the catalog's YAML files have the same cap)
MAX_DIMENSION = 2**31 - 1      # any size or count in a config
MAX_LAYERS = 1_000             # blocks per stack (the largest published models have under 200)
PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"

#: model_type -> (family builder name, counted head class)
FAMILIES: dict[str, str] = {
    "bert": "BertModel", "roberta": "RobertaModel", "t5": "T5ForConditionalGeneration",
    "gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM", "gemma2": "Gemma2ForCausalLM", "falcon": "FalconForCausalLM",
    "qwen3": "Qwen3ForCausalLM", "gemma3_text": "Gemma3ForCausalLM", "phi3": "Phi3ForCausalLM",
    "olmo2": "Olmo2ForCausalLM",
}
_ARCH_PREFIX = {"Bert": "bert", "Roberta": "roberta", "T5": "t5", "GPT2": "gpt2", "Llama": "llama",
                "Mistral": "mistral", "Qwen2": "qwen2", "Gemma2": "gemma2", "Falcon": "falcon", "Qwen3": "qwen3",
                "Gemma3": "gemma3_text", "Phi3": "phi3", "Olmo2": "olmo2"}
#: decoder families built by `_llama`: pre-norm (OLMo-2: post-norm) blocks, gated FFN, RMSNorm, rotary positions
_HEAD_DIM_DEFAULT = {"gemma2": 256, "gemma3_text": 256, "qwen3": 128}  # the config class's head_dim default
_TIED_DEFAULT = ("gemma2", "gemma3_text")


@dataclass(frozen=True)
class LinearModule:
    """One linear layer of the model, as peft's `target_modules` would see it."""

    name: str                   # full module name in the counted class: model.layers.0.self_attn.q_proj
    kind: str                   # the name without the block index, for breakdowns: self_attn.q_proj
    roles: tuple[str, ...]      # ("q",), ("q", "k", "v") for a fused projection, () for lm_head / pooler
    d_in: int
    d_out: int
    bias: bool
    layer: int | None = None    # block index inside its stack
    stack: str | None = None    # "encoder" / "decoder" for T5, None otherwise
    cross: bool = False         # T5 decoder cross-attention

    @property
    def role(self) -> str | None:
        return "+".join(self.roles) or None

    @property
    def n_params(self) -> int:
        return self.d_in * self.d_out + (self.d_out if self.bias else 0)


@dataclass(frozen=True)
class Architecture:
    """A model shape: formula symbols, the exact parameter table and the linear-module inventory."""

    name: str
    family: str
    head_class: str
    n_layers: int
    d_model: int
    d_ff: int
    n_heads: int
    d_head: int
    n_kv_heads: int
    vocab_size: int
    tied_embeddings: bool
    gated_ffn: bool
    params: tuple[tuple[str, int], ...]
    modules: tuple[LinearModule, ...]
    n_encoder_layers: int = 0        # T5 only
    n_decoder_layers: int = 0        # T5 only
    norm: str = "rmsnorm"            # "rmsnorm" or "layernorm" (memory model)
    activation: str = "silu"         # FFN activation name as in the config
    dropout: float = 0.0             # residual / hidden dropout probability while training
    attention_dropout: float = 0.0
    parallel_block: bool = False     # Falcon: attention and MLP read the same input
    max_positions: int | None = None  # learned absolute positions (BERT, RoBERTa, GPT-2): the longest input
    source: str | None = None        # where a preset's numbers come from
    config: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def n_params(self) -> int:
        return sum(n for _, n in self.params)

    @property
    def n_bias(self) -> int:
        return sum(n for name, n in self.params if name.endswith(".bias"))

    @property
    def is_encoder_decoder(self) -> bool:
        return self.family == "t5"

    def symbols(self) -> dict[str, int]:
        """The architecture symbols of `peftkb.formula.ARCH_SYMBOLS` (all but the per-target ones)."""
        return {"n_layers": self.n_layers, "d_model": self.d_model, "d_ff": self.d_ff, "n_heads": self.n_heads,
                "d_head": self.d_head, "n_kv_heads": self.n_kv_heads, "vocab_size": self.vocab_size,
                "n_params": self.n_params, "n_bias": self.n_bias}

    def norms_per_block(self, stack: str | None = None) -> int:
        """Normalisation layers in one block (block 0 of the given stack)."""
        prefix = {"encoder": "encoder.block.0.", "decoder": "decoder.block.0."}.get(stack or "", None)
        pattern = re.compile(r"(^|\.)(0)\.")
        count = 0
        for pname, _ in self.params:
            if prefix and not pname.startswith(prefix):
                continue
            if not prefix and not pattern.search(pname):
                continue
            low = pname.lower()
            if low.endswith("weight") and ("norm" in low or ".ln_" in low):
                count += 1
        return count

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, "head_class": self.head_class, **self.symbols(),
                "tied_embeddings": self.tied_embeddings, "gated_ffn": self.gated_ffn,
                "linear_modules": len(self.modules), "source": self.source}


# -- reading configs --------------------------------------------------------------------------------
class _Config:
    """A config dict with the family's defaults and key aliases."""

    def __init__(self, data: dict[str, Any], where: str) -> None:
        self.data = data
        self.where = where

    def get(self, *keys: str, default: Any = None) -> Any:
        for key in keys:
            if key in self.data and self.data[key] is not None:
                return self.data[key]
        return default

    def int(self, *keys: str, default: int | None = None) -> int:
        value = self.get(*keys, default=default)
        if value is None:
            raise UsageError(f"{self.where}: config has no '{keys[0]}'")
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise UsageError(f"{self.where}: '{keys[0]}' must be a positive integer, not {_short(value)}")
        limit = MAX_LAYERS if "layer" in keys[0] else MAX_DIMENSION
        if value > limit:
            raise UsageError(f"{self.where}: '{keys[0]}' is {_short(value)}, more than {limit:,}")
        return value

    def flag(self, *keys: str, default: bool) -> bool:
        return bool(self.get(*keys, default=default))

    def prob(self, *keys: str, default: float = 0.0) -> float:
        value = self.get(*keys, default=default)
        return float(value) if isinstance(value, (int, float)) else 0.0


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Builder:
    """Collects parameters and linear modules in named_parameters() order."""

    def __init__(self) -> None:
        self.params: list[tuple[str, int]] = []
        self.modules: list[LinearModule] = []

    def param(self, name: str, numel: int) -> None:
        self.params.append((name, numel))

    def norm(self, name: str, d: int, bias: bool) -> None:
        self.param(f"{name}.weight", d)
        if bias:
            self.param(f"{name}.bias", d)

    def linear(self, name: str, kind: str, roles: tuple[str, ...], d_in: int, d_out: int, bias: bool, *,
               layer: int | None = None, stack: str | None = None, cross: bool = False,
               counted: bool = True) -> None:
        """A linear layer; `counted=False` for a tied lm_head (the module exists, its weight is the embedding)."""
        if counted:
            self.param(f"{name}.weight", d_in * d_out)
            if bias:
                self.param(f"{name}.bias", d_out)
        self.modules.append(LinearModule(name, kind, roles, d_in, d_out, bias, layer, stack, cross))


def _transformers_major() -> int:
    """Major version of the installed transformers, read from its metadata (no import); 5 when absent."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return int(version("transformers").split(".", 1)[0])
    except (PackageNotFoundError, ValueError):
        return 5


def model_type_of(cfg: dict[str, Any]) -> str | None:
    model_type = cfg.get("model_type")
    if isinstance(model_type, str):
        return model_type
    for arch in cfg.get("architectures") or []:
        for prefix, family in sorted(_ARCH_PREFIX.items(), key=lambda kv: -len(kv[0])):
            if isinstance(arch, str) and arch.startswith(prefix):
                return family
    return None


def architecture_from_config(cfg: dict[str, Any], name: str = "config", source: str | None = None) -> Architecture:
    """Architecture of a Hugging Face config dict (keys starting with '_' are ignored)."""
    if not isinstance(cfg, dict):
        raise UsageError(f"{name}: a config must be a JSON object")
    data = {k: v for k, v in cfg.items() if not k.startswith("_")}
    model_type = model_type_of(data)
    if model_type not in FAMILIES:
        raise UsageError(f"{name}: model_type {model_type!r} is not supported; supported: " + ", ".join(FAMILIES))
    c = _Config(data, name)
    build = {"bert": _bert, "roberta": _bert, "t5": _t5, "gpt2": _gpt2, "falcon": _falcon}.get(model_type, _llama)
    fields = build(c, model_type)
    return Architecture(name=name, family=model_type, head_class=FAMILIES[model_type], source=source,
                        config=data, **fields)


# -- families ---------------------------------------------------------------------------------------
def _llama(c: _Config, family: str) -> dict[str, Any]:
    """llama, mistral, qwen2/3, gemma2/3, phi3, olmo2: decoder, gated FFN (gate/up/down), RMSNorm, rotary."""
    d = c.int("hidden_size")
    heads = c.int("num_attention_heads")
    kv = c.int("num_key_value_heads", default=heads)
    layers = c.int("num_hidden_layers")
    ff = c.int("intermediate_size")
    vocab = c.int("vocab_size")
    if heads % kv:
        raise UsageError(f"{c.where}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}")
    if family in _HEAD_DIM_DEFAULT:
        d_head = c.int("head_dim", default=_HEAD_DIM_DEFAULT[family])  # not hidden_size // heads
    else:
        if c.get("head_dim") is None and d % heads:
            raise UsageError(f"{c.where}: hidden_size {d} is not a multiple of num_attention_heads {heads} "
                             "(and no head_dim is given)")
        d_head = c.int("head_dim", default=d // heads)
    if family == "phi3" and d_head * heads != d:  # Phi3Attention takes head_dim = hidden_size // heads
        raise UsageError(f"{c.where}: Phi-3 needs hidden_size {d} = num_attention_heads {heads} x head_dim")
    tied = c.flag("tie_word_embeddings", default=family in _TIED_DEFAULT)
    has_attention_bias = family in ("llama", "gemma2", "gemma3_text", "qwen3", "olmo2")
    attn_bias = c.flag("attention_bias", default=False) if has_attention_bias else False
    qkv_bias = True if family == "qwen2" else attn_bias  # Qwen2 always has q/k/v biases, never an o bias
    mlp_bias = c.flag("mlp_bias", default=False) if family == "llama" else False

    b = _Builder()
    b.param("model.embed_tokens.weight", vocab * d)
    for i in range(layers):
        p = f"model.layers.{i}"
        if family == "phi3":  # transformers' Phi3 orders o_proj before the fused qkv_proj
            b.linear(f"{p}.self_attn.o_proj", "self_attn.o_proj", ("o",), heads * d_head, d, False, layer=i)
            b.linear(f"{p}.self_attn.qkv_proj", "self_attn.qkv_proj", ("q", "k", "v"), d,
                     (heads + 2 * kv) * d_head, False, layer=i)
        else:
            for proj, role, d_in, d_out, bias in (("q_proj", "q", d, heads * d_head, qkv_bias),
                                                  ("k_proj", "k", d, kv * d_head, qkv_bias),
                                                  ("v_proj", "v", d, kv * d_head, qkv_bias),
                                                  ("o_proj", "o", heads * d_head, d, attn_bias)):
                b.linear(f"{p}.self_attn.{proj}", f"self_attn.{proj}", (role,), d_in, d_out, bias, layer=i)
            if family in ("qwen3", "gemma3_text"):  # RMSNorm over each head of q and k
                b.norm(f"{p}.self_attn.q_norm", d_head, bias=False)
                b.norm(f"{p}.self_attn.k_norm", d_head, bias=False)
            elif family == "olmo2":  # RMSNorm over all of q and all of k
                b.norm(f"{p}.self_attn.q_norm", heads * d_head, bias=False)
                b.norm(f"{p}.self_attn.k_norm", kv * d_head, bias=False)
        if family == "phi3":
            b.linear(f"{p}.mlp.gate_up_proj", "mlp.gate_up_proj", ("gate", "up"), d, 2 * ff, False, layer=i)
            b.linear(f"{p}.mlp.down_proj", "mlp.down_proj", ("down",), ff, d, False, layer=i)
        else:
            for proj, role, d_in, d_out in (("gate_proj", "gate", d, ff), ("up_proj", "up", d, ff),
                                            ("down_proj", "down", ff, d)):
                b.linear(f"{p}.mlp.{proj}", f"mlp.{proj}", (role,), d_in, d_out, mlp_bias, layer=i)
        if family == "olmo2":
            norms = ["post_attention_layernorm", "post_feedforward_layernorm"]
        else:
            norms = ["input_layernorm", "post_attention_layernorm"]
        if family in ("gemma2", "gemma3_text"):
            norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
        for norm in norms:
            b.norm(f"{p}.{norm}", d, bias=False)
    b.norm("model.norm", d, bias=False)
    b.linear("lm_head", "lm_head", (), d, vocab, False, counted=not tied)
    gemma = family in ("gemma2", "gemma3_text")
    act = c.get("hidden_activation", "hidden_act", default="gelu_pytorch_tanh" if gemma else "silu")
    return dict(n_layers=layers, d_model=d, d_ff=ff, n_heads=heads, d_head=d_head, n_kv_heads=kv,
                vocab_size=vocab, tied_embeddings=tied, gated_ffn=True, params=tuple(b.params),
                modules=tuple(b.modules), norm="rmsnorm", activation=str(act),
                dropout=c.prob("resid_pdrop") if family == "phi3" else 0.0,
                attention_dropout=c.prob("attention_dropout"))


def _bert(c: _Config, family: str) -> dict[str, Any]:
    """bert, roberta: post-norm encoder with biases everywhere, LayerNorm, learned positions, pooler."""
    defaults = {"bert": (30522, 512, 2), "roberta": (50265, 512, 2)}[family]
    d = c.int("hidden_size", default=768)
    heads = c.int("num_attention_heads", default=12)
    layers = c.int("num_hidden_layers", default=12)
    ff = c.int("intermediate_size", default=3072)
    vocab = c.int("vocab_size", default=defaults[0])
    positions = c.int("max_position_embeddings", default=defaults[1])
    types = c.int("type_vocab_size", default=defaults[2])
    if d % heads:
        raise UsageError(f"{c.where}: hidden_size {d} is not a multiple of num_attention_heads {heads}")
    if c.get("position_embedding_type", default="absolute") != "absolute":
        raise UsageError(f"{c.where}: only position_embedding_type 'absolute' is supported")
    b = _Builder()
    b.param("embeddings.word_embeddings.weight", vocab * d)
    b.param("embeddings.position_embeddings.weight", positions * d)
    b.param("embeddings.token_type_embeddings.weight", types * d)
    b.norm("embeddings.LayerNorm", d, bias=True)
    for i in range(layers):
        p = f"encoder.layer.{i}"
        for proj, role in (("query", "q"), ("key", "k"), ("value", "v")):
            b.linear(f"{p}.attention.self.{proj}", f"attention.self.{proj}", (role,), d, d, True, layer=i)
        b.linear(f"{p}.attention.output.dense", "attention.output.dense", ("o",), d, d, True, layer=i)
        b.norm(f"{p}.attention.output.LayerNorm", d, bias=True)
        b.linear(f"{p}.intermediate.dense", "intermediate.dense", ("up",), d, ff, True, layer=i)
        b.linear(f"{p}.output.dense", "output.dense", ("down",), ff, d, True, layer=i)
        b.norm(f"{p}.output.LayerNorm", d, bias=True)
    b.linear("pooler.dense", "pooler.dense", (), d, d, True)
    return dict(n_layers=layers, d_model=d, d_ff=ff, n_heads=heads, d_head=d // heads, n_kv_heads=heads,
                vocab_size=vocab, tied_embeddings=False, gated_ffn=False, params=tuple(b.params),
                modules=tuple(b.modules), norm="layernorm", activation=str(c.get("hidden_act", default="gelu")),
                # RoBERTa's positions start after padding_idx (1), so two rows are never used by a token
                max_positions=positions - 2 if family == "roberta" else positions,
                dropout=c.prob("hidden_dropout_prob", default=0.1),
                attention_dropout=c.prob("attention_probs_dropout_prob", default=0.1))


def _t5(c: _Config, family: str) -> dict[str, Any]:
    """t5: encoder-decoder, no biases, RMS-style T5LayerNorm, relative position bias in block 0 of each stack."""
    d = c.int("d_model", "hidden_size", default=512)
    d_kv = c.int("d_kv", "head_dim", default=64)
    ff = c.int("d_ff", default=2048)
    enc = c.int("num_layers", "num_hidden_layers", default=6)
    dec = c.int("num_decoder_layers", default=enc)
    heads = c.int("num_heads", "num_attention_heads", default=8)
    vocab = c.int("vocab_size", default=32128)
    buckets = c.int("relative_attention_num_buckets", default=32)
    proj = str(c.get("feed_forward_proj", default="relu"))
    gated = proj.startswith("gated-")
    # transformers 5 forces T5Config.tie_word_embeddings to True (see the module docstring)
    tied = c.flag("tie_word_embeddings", default=True) or _transformers_major() >= 5
    inner = heads * d_kv

    b = _Builder()
    b.param("shared.weight", vocab * d)
    for stack, n in (("encoder", enc), ("decoder", dec)):
        for i in range(n):
            p = f"{stack}.block.{i}.layer"
            attns = [("0", "SelfAttention", False)] + ([("1", "EncDecAttention", True)] if stack == "decoder" else [])
            for sub, attn, cross in attns:
                for m, role, d_in, d_out in (("q", "q", d, inner), ("k", "k", d, inner), ("v", "v", d, inner),
                                             ("o", "o", inner, d)):
                    b.linear(f"{p}.{sub}.{attn}.{m}", f"{stack} {attn}.{m}", (role,), d_in, d_out, False,
                             layer=i, stack=stack, cross=cross)
                if i == 0 and not cross:
                    b.param(f"{p}.{sub}.{attn}.relative_attention_bias.weight", buckets * heads)
                b.norm(f"{p}.{sub}.layer_norm", d, bias=False)
            ffn = "2" if stack == "decoder" else "1"
            ffn_modules = ((("wi_0", "gate", d, ff), ("wi_1", "up", d, ff)) if gated else (("wi", "up", d, ff),))
            for m, role, d_in, d_out in (*ffn_modules, ("wo", "down", ff, d)):
                b.linear(f"{p}.{ffn}.DenseReluDense.{m}", f"{stack} DenseReluDense.{m}", (role,), d_in, d_out, False,
                         layer=i, stack=stack)
            b.norm(f"{p}.{ffn}.layer_norm", d, bias=False)
        b.norm(f"{stack}.final_layer_norm", d, bias=False)
    b.linear("lm_head", "lm_head", (), d, vocab, False, counted=not tied)
    act = proj.split("-", 1)[1] if gated else proj
    return dict(n_layers=enc + dec, d_model=d, d_ff=ff, n_heads=heads, d_head=d_kv, n_kv_heads=heads,
                vocab_size=vocab, tied_embeddings=tied, gated_ffn=gated, params=tuple(b.params),
                modules=tuple(b.modules), n_encoder_layers=enc, n_decoder_layers=dec, norm="rmsnorm",
                activation=act, dropout=c.prob("dropout_rate", default=0.1),
                attention_dropout=c.prob("dropout_rate", default=0.1))


def _gpt2(c: _Config, family: str) -> dict[str, Any]:
    """gpt2: pre-norm decoder with Conv1D layers (weight stored (d_in, d_out)), fused c_attn, learned positions."""
    d = c.int("n_embd", "hidden_size", default=768)
    layers = c.int("n_layer", "num_hidden_layers", default=12)
    heads = c.int("n_head", "num_attention_heads", default=12)
    vocab = c.int("vocab_size", default=50257)
    positions = c.int("n_positions", "max_position_embeddings", default=1024)
    ff = c.int("n_inner", default=4 * d)
    tied = c.flag("tie_word_embeddings", default=True)
    if c.flag("add_cross_attention", default=False):
        raise UsageError(f"{c.where}: GPT-2 with add_cross_attention is not supported")
    if d % heads:
        raise UsageError(f"{c.where}: n_embd {d} is not a multiple of n_head {heads}")
    b = _Builder()
    b.param("transformer.wte.weight", vocab * d)
    b.param("transformer.wpe.weight", positions * d)
    for i in range(layers):
        p = f"transformer.h.{i}"
        b.norm(f"{p}.ln_1", d, bias=True)
        # c_attn holds q, k and v in one Conv1D: one module for peft, selected by any of the three roles
        b.linear(f"{p}.attn.c_attn", "attn.c_attn", ("q", "k", "v"), d, 3 * d, True, layer=i)
        b.linear(f"{p}.attn.c_proj", "attn.c_proj", ("o",), d, d, True, layer=i)
        b.norm(f"{p}.ln_2", d, bias=True)
        b.linear(f"{p}.mlp.c_fc", "mlp.c_fc", ("up",), d, ff, True, layer=i)
        b.linear(f"{p}.mlp.c_proj", "mlp.c_proj", ("down",), ff, d, True, layer=i)
    b.norm("transformer.ln_f", d, bias=True)
    b.linear("lm_head", "lm_head", (), d, vocab, False, counted=not tied)
    return dict(n_layers=layers, d_model=d, d_ff=ff, n_heads=heads, d_head=d // heads, n_kv_heads=heads,
                vocab_size=vocab, tied_embeddings=tied, gated_ffn=False, params=tuple(b.params),
                modules=tuple(b.modules), norm="layernorm",
                activation=str(c.get("activation_function", default="gelu_new")), max_positions=positions,
                dropout=c.prob("resid_pdrop", default=0.1), attention_dropout=c.prob("attn_pdrop", default=0.1))


def _falcon(c: _Config, family: str) -> dict[str, Any]:
    """falcon: fused query_key_value (multi-query or grouped KV), LayerNorm with bias, parallel attention/MLP."""
    d = c.int("hidden_size", "n_embed", default=4544)
    layers = c.int("num_hidden_layers", "n_layer", default=32)
    heads = c.int("num_attention_heads", "n_head", default=71)
    vocab = c.int("vocab_size", default=65024)
    new_arch = c.flag("new_decoder_architecture", default=False)
    multi_query = c.flag("multi_query", default=True)
    parallel = c.flag("parallel_attn", default=True)
    bias = c.flag("bias", default=False)
    tied = c.flag("tie_word_embeddings", default=True)
    ff = c.int("ffn_hidden_size", default=4 * d)
    if d % heads:
        raise UsageError(f"{c.where}: hidden_size {d} is not a multiple of num_attention_heads {heads}")
    d_head = d // heads
    if new_arch:
        kv = c.int("num_kv_heads", "n_head_kv", default=heads)
        if heads % kv:
            raise UsageError(f"{c.where}: num_attention_heads {heads} is not a multiple of num_kv_heads {kv}")
        qkv_out = (heads + 2 * kv) * d_head
    elif multi_query:
        kv, qkv_out = 1, d + 2 * d_head
    else:
        kv, qkv_out = heads, 3 * d
    n_ln = c.get("num_ln_in_parallel_attn", default=2 if new_arch else None)
    if not parallel:
        norms = ["post_attention_layernorm", "input_layernorm"]
    elif n_ln == 2:
        norms = ["ln_attn", "ln_mlp"]
    else:
        norms = ["input_layernorm"]
    b = _Builder()
    b.param("transformer.word_embeddings.weight", vocab * d)
    for i in range(layers):
        p = f"transformer.h.{i}"
        # query_key_value is fused like GPT-2's c_attn: one module, selected by any of q/k/v
        b.linear(f"{p}.self_attention.query_key_value", "self_attention.query_key_value", ("q", "k", "v"),
                 d, qkv_out, bias, layer=i)
        b.linear(f"{p}.self_attention.dense", "self_attention.dense", ("o",), d, d, bias, layer=i)
        b.linear(f"{p}.mlp.dense_h_to_4h", "mlp.dense_h_to_4h", ("up",), d, ff, bias, layer=i)
        b.linear(f"{p}.mlp.dense_4h_to_h", "mlp.dense_4h_to_h", ("down",), ff, d, bias, layer=i)
        for norm in norms:
            b.norm(f"{p}.{norm}", d, bias=True)
    b.norm("transformer.ln_f", d, bias=True)
    b.linear("lm_head", "lm_head", (), d, vocab, False, counted=not tied)
    return dict(n_layers=layers, d_model=d, d_ff=ff, n_heads=heads, d_head=d_head, n_kv_heads=kv,
                vocab_size=vocab, tied_embeddings=tied, gated_ffn=False, params=tuple(b.params),
                modules=tuple(b.modules), norm="layernorm", activation=str(c.get("activation", default="gelu")),
                dropout=c.prob("hidden_dropout"), attention_dropout=c.prob("attention_dropout"),
                parallel_block=parallel)


# -- presets and model specs ------------------------------------------------------------------------
def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def read_preset(name: str) -> dict[str, Any]:
    path = PRESET_DIR / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8"))


def _read_json(path: Path) -> dict[str, Any]:
    """A config.json as a dict; every way a file can be unreadable is one UsageError line."""
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise UsageError(f"{path}: file is {size:,} bytes; a config.json is at most {MAX_CONFIG_BYTES:,}")
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise UsageError(f"{path}:{line}: not valid UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    except RecursionError:
        raise UsageError(f"{path}: JSON nested too deeply") from None
    except ValueError:  # json's only other error: an integer of more than 4,300 digits
        raise UsageError(f"{path}: holds an integer too long to read (over 4,300 digits)") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a config.json must hold a JSON object")
    return data


def load_model(spec: str) -> Architecture:
    """A model from a preset name, a config.json file, or a folder holding config.json.

    Presets match by file name (case-insensitive) or by their `_hf_id` (e.g. meta-llama/Llama-2-7b-hf).
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise UsageError(f"{path}: folder has no config.json")
        return architecture_from_config(_read_json(config), name=str(path))
    if path.is_file():
        return architecture_from_config(_read_json(path), name=str(path))
    names = preset_names()
    key = spec.strip().lower()
    chosen = key if key in names else None
    if chosen is None:
        for name in names:
            hf_id = read_preset(name).get("_hf_id", "")
            if isinstance(hf_id, str) and hf_id.lower() == key:
                chosen = name
                break
    if chosen is None:
        if spec.endswith(".json") or "/" in spec and not spec.count("/") == 1:
            raise UsageError(f"{spec}: no such file")
        raise NotFoundError(f"no model preset or config file '{spec}'" + did_you_mean(spec, names)
                            + "; presets: " + ", ".join(names))
    data = read_preset(chosen)
    return architecture_from_config(data, name=chosen, source=data.get("_source"))
