"""Peak training-memory estimate: weights, gradients, optimizer states, activations and overhead.

The estimate is for one training step of a Hugging Face model (transformers 4.5x, peft for adapter methods)
with a batch of B sequences of S tokens, in steady state (optimizer states already allocated).

Symbols: B batch, S sequence length, d d_model, f d_ff, h n_heads, h_kv n_kv_heads, d_h d_head, V vocab_size,
L number of blocks, p bytes per element of --dtype (fp32 4, bf16/fp16 2), r LoRA rank, P virtual tokens.

Precision (--precision; with --dtype fp32 everything is fp32 and it does not apply)
    pure-bf16   (the default; pure-fp16 alike with --dtype fp16) the model is cast to bf16 and trained without AMP, as peft's method-comparison
                suite runs it (default_training_params.json: dtype bfloat16, use_amp false, autocast_adapter_dtype
                true, huggingface/peft@41921013): base weights, their gradients and AdamW states in bf16 (t = p);
                the adapter weights peft creates are upcast to fp32, and with them their gradients and states.
    mixed       fp32 master weights, gradients and AdamW states for everything that trains (t = 4), bf16 compute
                under autocast (HF Trainer with bf16=True); the frozen base stays in --dtype. Autocast's bf16 copy
                of each trained weight is saved for backward: + trainable * p at the start of backward.
Adapter dtype (--adapter-dtype, pure precision only)
    fp32        (the default) peft upcasts the weights it adds to fp32 (autocast_adapter_dtype=True): a = 4.
    model       they stay in the model dtype (autocast_adapter_dtype=False): a = p for the adapter weights, their
                gradients, AdamW states and buffers, and for what the adapter's forward keeps (its input, cast
                to the adapter dtype, is then the base layer's input itself and is shared as in an fp32 model).

Weights
    frozen      (n_params - trained base weights) * p; with --quantize nf4 the linear layers of the blocks take
                0.5 byte per weight plus quantization constants: one 8-bit absmax per block of 64 weights and,
                with double quantization, one fp32 constant per 256 such blocks (0.5 + 1/64 + 4/16384 bytes).
                Embeddings, norms and lm_head stay in p bytes (bitsandbytes does not quantize them).
    trainable   trainable * t, where t = 4 for added adapter weights (peft keeps them in fp32) and, for methods
                that train base weights (full fine-tuning, BitFit, Child-Tuning), t = p under pure-bf16, 4 under mixed.
Gradients       trainable * t.
Optimizer       adamw: 2 states * t per trainable weight, plus a temporary during the step: the size of all
                trainable weights on CUDA (torch's foreach AdamW), of the largest trainable tensor on CPU
                (torch's per-tensor loop there); sgd: none (no momentum); adamw-8bit: 2 bytes + 8/2048 for block
                constants (bitsandbytes, block size 2048), no temporary.

Activations, per block and per token (tokens = B * S', S' = S + P for methods that prepend virtual tokens)
    norms       RMSNorm: 4d per norm (HF upcasts the input to fp32 and keeps it); LayerNorm: p*d + 8
                (input, mean and rstd); x n_norm (2 for Llama, 4 for Gemma-2, 2 or 3 for T5 blocks).
    attention   SDPA (flash / memory-efficient): p*(2*h*d_h + 2*h_kv'*d_h) + 4h for q, k, v, output and the
                log-sum-exp; h_kv' = h_kv (native GQA) unless an attention mask is passed (--padding-mask, and
                always for prefix methods): then transformers repeats k/v to h heads and SDPA also keeps the
                mask, p*S_k per token (S_k = key length).
                eager (and always for T5): p*(h*d_h + 2*h*d_h) + h*S'*(4 + p): q, k, v and the fp32 softmax
                output plus its cast, i.e. O(S'^2) per sequence.
    FFN         gated (gate/up/down): 3f*p (activation input, activation output and up output kept by the
                product); otherwise f*p, or 4f*p for GPT-2's tanh-GELU written out in Python (gelu_new).
    dropout     with dropout probability > 0 (BERT, GPT-2, T5): masks of 2d (+ f in T5's FFN; + h*S' on
                attention probabilities under eager attention), 1 byte each on CUDA (fused dropout keeps a
                bool mask), p bytes on CPU (it keeps the scaled noise tensor).
    frozen linears keep nothing (autograd saves a linear's input only to form its weight gradient).
    Method terms:
      full / Child-Tuning   inputs of every linear layer: p*(2d + h*d_h + f), plus p*d per RMSNorm (its weight
                            is trained too)
      LoRA family           per targeted module the adapter input (peft casts it to the adapter dtype:
                            a*d_in, shared by a block's q/k/v only when a = p and without dropout) and the
                            rank-r intermediate a*r; with dropout a mask of d_in bytes (CUDA) or a*d_in (CPU).
                            DoRA adds d_out * p. MiSS (but its bat variant) and TinyLoRA keep no adapter
                            input: x first meets a parameter-free shard sum or a frozen projection, so only
                            the rank-r result is saved (ADAPTER_INPUT_NOT_KEPT).
      BOFT                  per adapted module x and the output scaled by boft_s, p*(d_in + d_out) per token,
                            and three d_in x d_in matrices, 3*p*d_in^2 once per block (DENSE_ROTATION)
      FourierFT, WaveFT     per adapted module the input in the adapter dtype, a*d_in per token, and the dense
                            update dW they rebuild each forward, a*d_in*d_out once per block (DENSE_DELTA)
      (IA)^3                the scaled tensors: p*2*h_kv*d_h for keys and values, a*f for the FFN input
                            (peft casts it to the vector's dtype before scaling)
      adapters              per adapter p*(d + 2m), m the bottleneck; two adapters per block for sequential
                            (Houlsby) placement
      prefix tuning         keys and values get P more positions: B * p * 2*P*h*d_h per block (repeated,
                            as a mask is passed), the KV cache holding prefix + new keys and values at the KV
                            width (B * p * 2*(S+P)*h_kv*d_h per block), plus the expanded prefix itself
    gradient checkpointing  only each block's input is kept (p*d per token per block), plus one block's full
                            activations while it is recomputed.
Head (decoder models): logits and the fp32 log-softmax kept by the loss, V*(p + 4) per token, plus a backward
transient of two fp32 gradient buffers, 8V per token; for --quantize nf4 one dequantized weight (the largest
block linear layer, in p bytes). Encoder-only models (BERT, RoBERTa) have no LM head: the task head is ignored.

Peak = weights + optimizer states + max(backward, late, step) + overhead, over three moments:
    backward    its start: all activations + head transient + the gradients that exist already (all adapter
                gradients; for base-weight training only the LM head's, the others arrive block by block)
    late        its end: all gradients + one block's activations
    step        the optimizer step: all gradients + the optimizer temporary (activations freed)
For full fine-tuning the LM-head gradient at the start of backward counts only beyond the 8V per token the loss
backward has freed by then. Framework overhead: the CUDA context (512 MiB, not seen by
torch.cuda.max_memory_allocated) and 5% allocator fragmentation on the dynamic part; `allocated` leaves the
overhead out and is the number to compare with max_memory_allocated.

Checked against measurements (benchmarks/memory_accuracy.py, CPU): within a few percent for LoRA, (IA)^3,
prompt and prefix tuning, BitFit and full fine-tuning on Llama configs, in fp32 and bf16; typically 2-5% low
for frozen-base methods (small tensors and per-op working buffers are not modelled). The tests also compare the
activation terms with the tensors autograd saves (saved_tensors_hooks). Not measured here: CUDA kernels'
own choices (flash vs memory-efficient attention), bitsandbytes NF4 and 8-bit optimizers, T5, GPT-2, BERT.

What is approximate: rounding of allocator blocks, small tensors (RoPE tables, masks, losses) and per-op
working buffers, T5 target length (taken equal to S), per-block saved tensors of custom adapter code (modelled
on peft / AdapterHub layouts), activations under mixed precision (taken as in the compute dtype), and methods the profile does not recognise (counted as frozen-base methods
with no extra terms; the estimate says so in its notes).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from peftkb.calculators.architecture import Architecture
from peftkb.calculators.params import ParamCount, hyperparameter_values
from peftkb.errors import UsageError

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
#: pure-bf16: the model cast to bf16, no AMP (peft's method-comparison suite); mixed: fp32 master weights, AMP
PRECISIONS = ("pure-bf16", "pure-fp16", "mixed")
#: where peft keeps the weights it adds: upcast to fp32 (autocast_adapter_dtype=True, peft's default) or in
#: the model's dtype (autocast_adapter_dtype=False)
ADAPTER_DTYPES = ("fp32", "model")
DEFAULT_PRECISION = "pure-bf16"  # "pure-" + --dtype when not given (pure-fp16 with --dtype fp16)
OPTIMIZERS = ("adamw", "sgd", "adamw-8bit")
QUANTIZATIONS = ("nf4",)
ATTENTIONS = ("sdpa", "eager")
DEVICES = ("cuda", "cpu")
CUDA_CONTEXT_BYTES = 512 * 2**20
MAX_SEQ = 2**24     # tokens per sequence (16,777,216): far beyond any model's context
MAX_BATCH = 2**16   # sequences per step
FRAGMENTATION = 0.05
GiB = 2**30
PHASES = ("backward", "late", "step")  # start of backward, end of backward, optimizer step


@dataclass
class Term:
    key: str
    label: str
    bytes: int
    formula: str
    phase: str  # "static", "backward" (its start), "late" (its end), "step", "overhead"

    def to_dict(self) -> dict[str, Any]:
        return {"term": self.key, "label": self.label, "bytes": self.bytes, "gib": round(self.bytes / GiB, 4),
                "formula": self.formula, "phase": self.phase}


@dataclass
class MemoryEstimate:
    method: str
    model: str
    batch: int
    seq: int
    dtype: str
    optimizer: str
    gradient_checkpointing: bool
    quantize: str | None
    device: str
    attention: str
    trainable: int
    terms: list[Term]
    notes: list[str] = field(default_factory=list)
    precision: str = "pure-bf16"
    adapter_dtype: str = "fp32"

    def _sum(self, phase: str) -> int:
        return sum(t.bytes for t in self.terms if t.phase == phase)

    @property
    def allocated(self) -> int:
        """Peak bytes held by tensors (what torch.cuda.max_memory_allocated measures)."""
        return self._sum("static") + self.dynamic

    @property
    def dynamic(self) -> int:
        return max(self._sum(phase) for phase in PHASES)

    @property
    def peak(self) -> int:
        """Peak device memory including framework overhead."""
        return self.allocated + self._sum("overhead")

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "model": self.model, "batch": self.batch, "seq": self.seq,
                "dtype": self.dtype, "precision": self.precision, "adapter_dtype": self.adapter_dtype,
                "optimizer": self.optimizer,
                "gradient_checkpointing": self.gradient_checkpointing, "quantize": self.quantize,
                "device": self.device, "attention": self.attention, "trainable": self.trainable,
                "peak_bytes": self.peak, "peak_gib": round(self.peak / GiB, 4),
                "allocated_bytes": self.allocated, "allocated_gib": round(self.allocated / GiB, 4),
                "terms": [t.to_dict() for t in self.terms], "notes": self.notes,
                "peak_formula": "static + max(backward, late, step) + overhead"}


# -- what a method keeps ------------------------------------------------------------------------------
@dataclass
class Profile:
    """How a method changes what is stored; built from catalog fields, not from a list of ids alone."""

    kind: str                       # full, bias, lowrank, ia3, adapter, prefix, prompt, generic (may combine)
    trains_base: bool = False
    full_linear_inputs: bool = False
    rank: int = 0
    lora_dropout: float = 0.0
    dora: bool = False
    ia3: bool = False
    virtual_tokens: int = 0         # prepended to the sequence (prompt tuning, P-tuning, ...)
    prefix_tokens: int = 0          # extra key/value positions (prefix tuning, MAM)
    adapters_per_block: int = 0
    bottleneck: int = 0
    quantized_base: bool = False
    recognised: bool = True
    target_keys: list[str] = field(default_factory=list)
    keeps_adapter_input: bool = True  # False for the peft types of ADAPTER_INPUT_NOT_KEPT
    dense_rotation: bool = False    # the peft types of DENSE_ROTATION
    dense_delta: bool = False       # the peft types of DENSE_DELTA: a d_out x d_in update rebuilt every forward
    osf: bool = False               # OSF's frozen SVD factors and its factored update (see _osf_terms)


#: peft types whose adapter branch does not keep its input x for backward, because x first meets a parameter-free
#: op or a frozen tensor, so autograd saves only the rank-r result (checked in peft 0.21.2's layer.py forward)
ADAPTER_INPUT_NOT_KEPT = {
    "MISS": "sums x's r-wide shards (no parameter) before multiplying by the trained block (not the bat variant)",
    "TINYLORA": "x meets the frozen projection A first (F.linear(x, A), A a buffer); only rank-r results are kept",
}


#: peft types that rebuild a dense fp32 update dW (d_out x d_in) from their coefficients in every forward and apply
#: it as F.linear(x.float(), dW): autograd keeps x (fp32) and dW of every adapted module until backward
#: (peft 0.21.2 FourierFTLayer / WaveFTLayer forward and get_delta_weight)
DENSE_DELTA = {"FOURIERFT": "inverse 2-D FFT of the sparse spectrum", "WAVEFT": "inverse wavelet transform"}
#: peft types that rotate the input by a dense d_in x d_in matrix built every forward: BOFT keeps x and the scaled
#: output (model dtype) per token and three d_in x d_in matrices (block-diagonal butterfly, their product, the
#: rotation) per module, as saved_tensors_hooks show for peft 0.21.2 with one butterfly factor
DENSE_ROTATION = {"BOFT": "x @ R(boft_R), then the frozen layer, then * boft_s"}


def _attr(obj: Any, name: str, default: Any = None) -> Any:
    value = getattr(obj, name, default)
    return default if value is None else value


def _int(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def profile_of(method: Any, values: dict[str, Any], arch: Architecture) -> Profile:
    tp = _attr(method, "trainable_params")
    props = _attr(method, "properties")
    formulas = " ".join(str(getattr(tp, s, "") or "") for s in ("per_target", "per_layer", "total")) if tp else ""
    impl = _attr(method, "implementations")
    peft = _attr(impl, "peft") if impl is not None else None
    peft_type = str(_attr(peft, "peft_type", "")) if peft is not None else ""
    option = str(_attr(peft, "option", "")) if peft is not None else ""
    trains_base = bool(_attr(props, "trains_base_weights", False))
    prof = Profile(kind="generic", trains_base=trains_base,
                   quantized_base=bool(_attr(props, "needs_quantized_base", False)))
    kinds = []
    if trains_base and re.search(r"\bn_params\b", formulas):
        prof.full_linear_inputs = True
        kinds.append("full")
    elif trains_base and re.search(r"\bn_bias\b", formulas):
        kinds.append("bias")
    if tp is not None and getattr(tp, "per_target", None) and ("r" in values or "init_r" in values):
        prof.rank = _int(values.get("init_r", values.get("r")))
        prof.lora_dropout = float(values.get("dropout") or values.get("lora_dropout") or 0.0)
        prof.dora = "dora" in option.lower() or method.id == "dora"
        # MiSS's bat variant multiplies x by the rebuilt weight W + dW, which trains: x is kept as for LoRA
        prof.keeps_adapter_input = peft_type not in ADAPTER_INPUT_NOT_KEPT or values.get("init") == "bat"
        kinds.append("lowrank")
    if peft_type == "IA3" or method.id == "ia3":
        prof.ia3 = True
        kinds.append("ia3")
    n_virtual = _int(values.get("n_virtual_tokens"))
    if peft_type == "PREFIX_TUNING" or method.id in ("prefix-tuning", "mam-adapter") or (
            n_virtual and re.search(r"n_virtual_tokens\s*\*\s*n_kv_heads|2\s*\*\s*n_virtual_tokens", formulas)):
        prof.prefix_tokens = n_virtual
        kinds.append("prefix")
    elif n_virtual and (_attr(props, "changes_sequence_length", False) or "input" in _attr(props, "inserts_at", [])):
        prof.virtual_tokens = n_virtual
        kinds.append("prompt")
    bottleneck = _int(values.get("bottleneck"))
    if not bottleneck and _int(values.get("reduction_factor")):
        bottleneck = arch.d_model // _int(values.get("reduction_factor"))
    if bottleneck:
        prof.bottleneck = bottleneck
        inserts = set(_attr(props, "inserts_at", []))
        placement = _attr(props, "placement")
        prof.adapters_per_block = 2 if placement == "sequential" and {"attention", "ffn"} <= inserts else 1
        kinds.append("adapter")
    if peft_type in DENSE_DELTA:
        prof.dense_delta = True
        kinds.append("dense-delta")
    if peft_type in DENSE_ROTATION:
        prof.dense_rotation = True
        kinds.append("dense-rotation")
    if peft_type == "OSF":
        prof.osf = True
        kinds.append("osf")
    if not kinds:
        prof.recognised = False
        kinds.append("generic")
    prof.kind = "+".join(kinds)
    return prof


# -- the estimate -------------------------------------------------------------------------------------
def _nf4_bytes_per_weight(block: int, double_quant: bool, dq_block: int) -> float:
    if double_quant:
        return 0.5 + 1 / block + 4 / (block * dq_block)
    return 0.5 + 4 / block


def estimate_memory(method: Any, arch: Architecture, count: ParamCount, *, batch: int, seq: int,
                    dtype: str = "bf16", optimizer: str = "adamw", gradient_checkpointing: bool = False,
                    quantize: str | None = None, device: str = "cuda", attention: str = "sdpa",
                    padding_mask: bool = False, overrides: dict[str, Any] | None = None,
                    precision: str | None = None, adapter_dtype: str = "fp32",
                    peft_version: str | None = None) -> MemoryEstimate:
    """Estimate peak training memory; `count` is the method's trainable count on `arch`.

    `peft_version` matters only where peft changed what a method keeps (OSF before 0.21: see _osf_terms); None
    means the peft this estimator was checked against (0.21.2)."""
    if dtype not in DTYPE_BYTES:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPE_BYTES)}, not '{dtype}'")
    if optimizer not in OPTIMIZERS:
        raise UsageError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, not '{optimizer}'")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise UsageError(f"--quantize must be one of {', '.join(QUANTIZATIONS)}, not '{quantize}'")
    if device not in DEVICES:
        raise UsageError(f"--device must be one of {', '.join(DEVICES)}, not '{device}'")
    if attention not in ATTENTIONS:
        raise UsageError(f"--attention must be one of {', '.join(ATTENTIONS)}, not '{attention}'")
    precision = resolve_precision(precision, dtype)
    if adapter_dtype not in ADAPTER_DTYPES:
        raise UsageError(f"--adapter-dtype must be one of {', '.join(ADAPTER_DTYPES)}, not '{adapter_dtype}'")
    if adapter_dtype == "model" and precision == "mixed":
        raise UsageError("--adapter-dtype model needs a pure precision: under --precision mixed every trained "
                         "weight has an fp32 master copy")
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
        raise UsageError(f"--batch must be an integer from 1 to {MAX_BATCH:,}, not {batch!r}")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= MAX_SEQ:
        raise UsageError(f"--seq must be an integer from 1 to {MAX_SEQ:,}, not {seq!r}")

    values = hyperparameter_values(method, overrides)
    prof = profile_of(method, values, arch)
    prof.target_keys = list(count.values.get("target_modules") or [])
    notes: list[str] = []
    if prof.quantized_base and quantize is None:
        quantize = "nf4"
        notes.append("the method needs a quantized base: estimating with --quantize nf4")
    if quantize and prof.trains_base:
        raise UsageError(f"method '{method.id}' trains base weights, which cannot stay 4-bit quantized")
    if arch.family == "t5" and attention == "sdpa":
        attention = "eager"
        notes.append("T5 attention has no SDPA path in transformers: eager attention assumed")
    if not prof.recognised:
        notes.append(f"no activation profile for '{method.id}': counted as a frozen-base method without extra "
                     "stored tensors (approximate)")
    notes.append(f"activation profile: {prof.kind}")

    p = DTYPE_BYTES[dtype]
    d, f, h, h_kv, dh, V = arch.d_model, arch.d_ff, arch.n_heads, arch.n_kv_heads, arch.d_head, arch.vocab_size
    trainable = count.trainable
    # a: bytes per element of the weights peft adds (and of the tensors their forward computes in their dtype)
    a = p if adapter_dtype == "model" else 4
    if precision == "mixed" or p == 4:
        t = 4  # fp32 master copy of every trained weight (mixed), or an fp32 model
    else:
        t = p if prof.trains_base else a  # pure: base weights in the model dtype; peft's adapters upcast (or not)
    if adapter_dtype == "model" and p < 4:
        notes.append("adapter weights in the model dtype (peft's autocast_adapter_dtype=False)")
    terms: list[Term] = []

    # -- weights ----------------------------------------------------------------------------------------
    trained_base = trainable if prof.trains_base else 0
    frozen_params = max(arch.n_params - trained_base, 0)
    if quantize == "nf4":
        block = _int(values.get("block_size")) or 64
        dq_block = _int(values.get("double_quant_block_size")) or 256
        per = _nf4_bytes_per_weight(block, True, dq_block)
        q_weights = sum(m.d_in * m.d_out for m in arch.modules if m.roles)
        rest = frozen_params - q_weights
        terms.append(Term("frozen_weights", "frozen weights (NF4 linears + rest)",
                          int(q_weights * per + rest * p),
                          f"{q_weights:,} * (0.5 + 1/{block} + 4/({block}*{dq_block})) + {rest:,} * p", "static"))
    else:
        terms.append(Term("frozen_weights", "frozen weights", frozen_params * p,
                          f"(n_params - trained base weights) * p = {frozen_params:,} * {p}", "static"))
    osf_rebuilds = prof.osf and osf_rebuilds_weight(peft_version)
    if osf_rebuilds:
        notes.append(f"OSF as peft {peft_version} builds it: the whole weight rebuilt in every forward")
    if prof.osf:
        buffers, _ = _osf_terms(arch, prof, values, p, a, osf_rebuilds)
        terms.append(Term("adapter_buffers", "OSF's frozen SVD factors", buffers * t,
                          f"sum over adapted modules of k(d_in + d_out + 1) (U_high, S_high, V_high), * {t}"
                          if osf_rebuilds else
                          f"sum over adapted modules of t(d_in + d_out + 1) + k*d_out if d_out > d_in + k*d_in if "
                          f"d_in > d_out, * {t} (kept with the adapter's dtype)", "static"))
    what = ("fp32 master weights" if precision == "mixed" and p < 4 else
            "model dtype" if prof.trains_base and t == p else
            ("fp32 adapter weights" if t == 4 else "adapter weights in the model dtype") if not prof.trains_base else "fp32")
    terms.append(Term("trainable_weights", "trainable weights", trainable * t, f"trainable * {t} ({what})", "static"))

    # -- optimizer ----------------------------------------------------------------------------------------
    if optimizer == "adamw":
        states = 2 * trainable * t
        states_f = f"2 * trainable * {t} (exp_avg, exp_avg_sq)"
        if device == "cuda":  # torch's foreach AdamW takes the sqrt of all second moments at once
            temp, temp_f = trainable * t, f"trainable * {t} (foreach sqrt buffer)"
        else:  # on CPU torch defaults to the per-tensor loop: one tensor's buffer at a time
            largest = max((n for _, n in arch.params), default=0) if prof.trains_base else 0
            temp = min(trainable, largest or trainable) * t
            temp_f = f"largest trainable tensor * {t} (per-tensor AdamW on CPU)"
    elif optimizer == "adamw-8bit":
        states, temp = int(trainable * (2 + 8 / 2048)), 0
        states_f, temp_f = "trainable * (2 + 8/2048) (two 8-bit states, fp32 absmax per 2048)", "0"
    else:
        states, temp = 0, 0
        states_f, temp_f = "0 (plain SGD keeps no state)", "0"
    terms.append(Term("optimizer_states", f"optimizer states ({optimizer})", states, states_f, "static"))

    # -- activations ----------------------------------------------------------------------------------------
    S = seq + prof.virtual_tokens
    if arch.max_positions is not None and S > arch.max_positions:
        extra = f" + {prof.virtual_tokens} virtual tokens" if prof.virtual_tokens else ""
        raise UsageError(f"--seq {seq}{extra} is longer than the {arch.max_positions} positions {arch.name} learned")
    tokens = batch * S
    # transformers passes k/v to SDPA un-repeated (native GQA) only when there is no attention mask;
    # prefix methods always build one (for the virtual positions), as does padding
    masked = padding_mask or bool(prof.prefix_tokens)
    gqa_kv = h_kv if (attention == "sdpa" and not masked) else h
    act_terms = _block_terms(arch, prof, p, attention, gqa_kv, S + prof.prefix_tokens, masked, device, a)
    per_token_block = sum(b for _, b, _ in act_terms)
    n_blocks = arch.n_layers
    per_sample_block = 0
    if prof.prefix_tokens:
        # the P extra key/value positions SDPA keeps (repeated to gqa_kv heads), and the model's KV cache,
        # which holds torch.cat(prefix, new) at the KV width for every block until the output is dropped
        per_sample_block = p * 2 * prof.prefix_tokens * gqa_kv * dh + p * 2 * prof.prefix_tokens * h_kv * dh
        act_terms.append(("kv cache", p * 2 * h_kv * dh, "p*2*h_kv*d_h (prefix + new keys/values, cached)"))
        per_token_block = sum(b for _, b, _ in act_terms)
    blocks_formula = " + ".join(f"{label} {formula}" for label, _, formula in act_terms)
    if gradient_checkpointing:
        kept = n_blocks * tokens * d * p
        one_block = tokens * per_token_block + batch * per_sample_block
        activations = kept + one_block
        act_formula = (f"L*B*S'*d*p (block inputs) + one block recomputed: B*S'*[{blocks_formula}]"
                       f" = {kept:,} + {one_block:,}")
    else:
        activations = n_blocks * (tokens * per_token_block + batch * per_sample_block)
        act_formula = f"L*B*S'*[{blocks_formula}]" + (" + L*B*p*2*P*(h + h_kv)*d_h (prefix positions)" if per_sample_block else "")
    if prof.dense_delta:  # each adapted module's rebuilt dW (adapter dtype), kept once per block, not per token
        from peftkb.calculators.params import select_modules

        dense = sum(a * m.d_in * m.d_out for m in select_modules(arch, prof.target_keys, strict=False))
        activations += dense / n_blocks if gradient_checkpointing else dense
        act_formula += f" + {a}*d_in*d_out per adapted module (rebuilt dense update)"
    if prof.dense_rotation:  # three d_in x d_in matrices in the model dtype per adapted module
        from peftkb.calculators.params import select_modules

        dense = sum(3 * p * m.d_in * m.d_in for m in select_modules(arch, prof.target_keys, strict=False))
        activations += dense / n_blocks if gradient_checkpointing else dense
        act_formula += " + 3*p*d_in^2 per adapted module (butterfly matrices and the rotation)"
    if prof.osf:  # per adapted module: x cast to the adapter dtype and the rank-2t hidden per token; A and B once
        _, (per_token, per_module) = _osf_terms(arch, prof, values, p, a, osf_rebuilds)
        osf_act = tokens * per_token + per_module
        activations += osf_act / n_blocks if gradient_checkpointing else osf_act
        act_formula += (f" + per OSF module {a}*B*S'*d_in + {a}*d_out*(d_in + t) (input, rebuilt weight, U_low S_low)"
                        if osf_rebuilds else
                        f" + per OSF module {a}*B*S'*(d_in + 2t) + {a}*2t*(d_in + d_out) (factored update)")
    if prof.prefix_tokens:  # the expanded past_key_values tensor itself (peft builds it at the KV width)
        activations += batch * n_blocks * p * 2 * prof.prefix_tokens * h_kv * dh
    if arch.family == "t5" and prof.full_linear_inputs:
        activations += tokens * d * p  # encoder output, input of every cross-attention k/v projection
    terms.append(Term("activations", "activations (blocks)", int(activations), act_formula, "backward"))

    head, head_t = _head_terms(arch, prof, p, tokens)
    terms.append(Term("head_activations", "head activations (logits, log-softmax)", head,
                      "B*S'*(V*(p + 4) + norm)" if head else "0 (no LM head)", "backward"))
    terms.append(Term("head_transient", "loss backward transient", head_t,
                      "B*S'*V*8 (two fp32 gradient buffers)" if head_t else "0", "backward"))
    if quantize == "nf4":
        largest = max((m.d_in * m.d_out for m in arch.modules if m.roles), default=0)
        terms.append(Term("dequant_transient", "dequantized weight (transient)", largest * p,
                          "largest block linear d_in*d_out*p", "backward"))
    # Gradients fill up while backward frees activations. Adapter gradients are small: all of them are counted
    # at the start. Base-weight gradients arrive block by block, so the start has only the LM head's (or the
    # tied embedding's) and the end has all of them plus one block's activations.
    grads = trainable * t
    if prof.trains_base and arch.family not in ("bert", "roberta"):
        # the LM-head gradient appears after the loss backward has freed two of its fp32 buffers (8V per token)
        head_params = arch.vocab_size * arch.d_model if prof.full_linear_inputs else 0
        early = max(0, min(head_params * t, grads) - head_t)
        early_f = f"max(0, V*d*{t} - B*S'*V*8) (LM-head gradient, once the loss buffers are freed)"
    elif prof.trains_base:
        early, early_f = 0, "0 (block gradients arrive as activations are freed)"
    else:
        early, early_f = grads, f"trainable * {t}"
    terms.append(Term("gradients_early", "gradients at the start of backward", early, early_f, "backward"))
    if precision == "mixed" and p < 4:
        # autocast casts each fp32 trained weight to the compute dtype once per forward and the matmuls save that
        # copy for backward, so it lives until backward has used it
        terms.append(Term("autocast_copies", "compute-dtype copies of trained weights (autocast)", trainable * p,
                          f"trainable * {p}", "backward"))
    block_share = int(activations / n_blocks) if n_blocks else 0
    terms.append(Term("gradients_late", "gradients at the end of backward", grads, f"trainable * {t}", "late"))
    terms.append(Term("activations_late", "one block's activations (end of backward)", block_share,
                      "activations / L", "late"))
    terms.append(Term("gradients", "gradients (optimizer step)", grads, f"trainable * {t}", "step"))
    terms.append(Term("optimizer_temporary", "optimizer step temporary", temp, temp_f, "step"))

    # -- overhead -------------------------------------------------------------------------------------------
    est = MemoryEstimate(method.id, arch.name, batch, seq, dtype, optimizer, gradient_checkpointing, quantize,
                         device, attention, trainable, terms, notes, precision, adapter_dtype)
    dynamic = est.dynamic
    context = CUDA_CONTEXT_BYTES if device == "cuda" else 0
    terms.append(Term("overhead", "framework overhead", int(context + FRAGMENTATION * dynamic),
                      f"{'CUDA context 512 MiB + ' if context else ''}{FRAGMENTATION:.0%} of the dynamic part",
                      "overhead"))
    if masked and attention == "sdpa":
        notes.append("an attention mask is passed: k/v repeated to n_heads and the mask kept per block")
    if prof.virtual_tokens:
        notes.append(f"sequence lengthened by {prof.virtual_tokens} virtual tokens (S' = {S})")
    if arch.family == "t5":
        notes.append("T5: decoder length taken equal to --seq")
    bad = [t for t in terms if not (t.bytes >= 0 and math.isfinite(t.bytes))]
    if bad or est.peak <= 0:
        what = ", ".join(f"{t.label} = {t.bytes}" for t in bad) or f"peak = {est.peak}"
        raise UsageError(f"method '{method.id}' on {arch.name}: the estimate is not a valid size ({what})")
    return est


def osf_rebuilds_weight(peft_version: str | None) -> bool:
    """Whether peft `peft_version` builds OSF's forward from the whole rebuilt weight: releases before 0.21 did
    (read at huggingface/peft@5d602fdb, 0.20.1.dev0); peft PR #3524 (a delta-based forward) replaced it, and
    0.21.2 has the factored update. Unparseable or absent versions mean the current layout."""
    match = re.match(r"(\d+)\.(\d+)", peft_version or "")
    return bool(match) and (int(match[1]), int(match[2])) < (0, 21)


def _osf_terms(arch: Architecture, prof: Profile, values: dict[str, Any], p: int,
               a: int = 4, rebuilds_weight: bool = False) -> tuple[int, tuple[int, int]]:
    """OSF as peft 0.21.2 builds it (osf/layer.py update_layer and forward), per adapted module with t trainable
    directions (trainable_rank, else min(d_in, d_out) - min(d_in, d_out) // 2) and k = min(d_in, d_out) - t frozen:

    buffers (elements): frozen copies of the initial U_low, S_low, V_low, t(d_in + d_out + 1), plus U_high (d_out x k)
    when d_out > d_in, or V_high (k x d_in) when d_in > d_out (the square factor is recovered from U_low / V_low);
    activations (bytes, a per element of the adapter dtype): x cast to the adapter dtype (a d_in) and h = x B^T
    (a * 2t) per token, and the factors A = [U S, -U0 S0] (d_out x 2t) and B = [V; V0] (2t x d_in) once per
    module. Where the adapter dtype is the model's (an fp32 model, or autocast_adapter_dtype=False) the cast
    returns x itself, so modules that read one input (q, k, v; gate, up) keep it once.

    `rebuilds_weight` (peft before 0.21, osf/layer.py forward and utils.reconstruct_weight_matrix at
    huggingface/peft@5d602fdb): buffers U_high (d_out x k), S_high (k) and V_high (k x d_in) of every module,
    k(d_in + d_out + 1); the forward builds W = U_high S_high V_high + (U_low S_low) V_low and calls
    F.linear(x, W), which keeps x (cast to the adapter dtype, a d_in per token) and W (a d_out d_in), while the
    product U_low S_low (a d_out t) is kept for V_low's gradient.
    Returns (buffer elements, (activation bytes per token, activation bytes per step)), summed over the modules.
    """
    from peftkb.calculators.params import select_modules

    chosen = _int(values.get("trainable_rank"))
    buffers = per_token = per_module = 0
    inputs_kept: set[Any] = set()  # (stack, layer, input group) where the cast is a no-op, else the module
    for m in select_modules(arch, prof.target_keys, strict=False):
        low = min(m.d_in, m.d_out)
        t = min(chosen, low) if chosen > 0 else low - low // 2
        k = low - t
        if rebuilds_weight:
            buffers += k * (m.d_in + m.d_out + 1)
        else:
            buffers += t * (m.d_in + m.d_out + 1) + (m.d_out * k if m.d_out > m.d_in else 0) \
                + (k * m.d_in if m.d_in > m.d_out else 0)
        source = (m.stack, m.layer, _input_group(m)) if p == a else m.name
        if source not in inputs_kept:
            inputs_kept.add(source)
            per_token += a * m.d_in
        if rebuilds_weight:
            per_module += a * m.d_out * (m.d_in + t)
        else:
            per_token += a * 2 * t
            per_module += a * 2 * t * (m.d_in + m.d_out)
    return buffers, (per_token, per_module)


def resolve_precision(precision: str | None, dtype: str) -> str:
    """The precision mode for --dtype: None means pure (the model in --dtype, no AMP); fp32 is fp32 throughout."""
    if precision is not None and precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, not '{precision}'")
    if dtype == "fp32":
        return "fp32"
    if precision is None:
        return f"pure-{dtype}"
    if precision.startswith("pure-") and precision != f"pure-{dtype}":
        raise UsageError(f"--precision {precision} needs --dtype {precision[5:]}, not {dtype}")
    return precision


def _norm_bytes(arch: Architecture, p: int, trained: bool) -> tuple[int, str]:
    if arch.norm == "rmsnorm":
        extra = p * arch.d_model if trained else 0
        return 4 * arch.d_model + extra, "4d" + (" + p*d" if trained else "")
    return p * arch.d_model + 8, "p*d + 8"


def _block_terms(arch: Architecture, prof: Profile, p: int, attention: str, gqa_kv: int,
                 S: int, masked: bool = False, device: str = "cuda", a: int = 4) -> list[tuple[str, float, str]]:
    """Bytes per token for one (average) block, as (label, bytes, formula) terms; S = key length; a = bytes per
    element of the adapter dtype."""
    d, f, h, h_kv, dh = arch.d_model, arch.d_ff, arch.n_heads, arch.n_kv_heads, arch.d_head
    terms: list[tuple[str, float, str]] = []
    enc, dec = (arch.n_encoder_layers, arch.n_decoder_layers) if arch.family == "t5" else (arch.n_layers, 0)
    blocks = enc + dec
    # norms: average per block over the stacks
    n_norm = (enc * arch.norms_per_block("encoder") + dec * arch.norms_per_block("decoder")) / blocks \
        if arch.family == "t5" else arch.norms_per_block()
    norm_b, norm_f = _norm_bytes(arch, p, prof.full_linear_inputs)
    terms.append(("norms", n_norm * norm_b, f"{n_norm:g}*({norm_f})"))
    cross = dec / blocks  # share of blocks with a cross-attention sublayer
    n_attn = 1 + cross
    if attention == "sdpa":
        attn = p * (2 * h * dh + 2 * gqa_kv * dh) + 4 * h
        attn_f = "p*(2h*d_h + 2h_kv*d_h) + 4h" if gqa_kv == h_kv else "p*(4h*d_h) + 4h"
        if masked:  # the additive mask (B, 1, S, S_k), in the model dtype, is saved with q, k and v
            attn += p * S
            attn_f += " + p*S_k (mask)"
    else:
        attn = p * 3 * h * dh + h * S * (4 + p)
        attn_f = "p*3h*d_h + h*S'*(4 + p)"
    terms.append(("attention", n_attn * attn, f"{n_attn:g}*({attn_f})"))
    if arch.gated_ffn:
        terms.append(("ffn", 3 * f * p, "3f*p"))
    elif arch.activation in ("gelu_new", "gelu_fast"):
        terms.append(("ffn", 4 * f * p, "4f*p (gelu_new)"))
    else:
        terms.append(("ffn", f * p, "f*p"))
    mask_b = 1 if device == "cuda" else p  # CUDA's fused dropout keeps a bool mask, CPU a scaled noise tensor
    if arch.dropout > 0:
        masks = 2 * d + (f if arch.family == "t5" else 0)
        formula = "2d" + (" + f" if arch.family == "t5" else "")
        if attention == "eager" and arch.attention_dropout > 0:
            masks += n_attn * h * S
            formula += " + h*S'"
        terms.append(("dropout masks", masks * mask_b, f"{mask_b}*({formula})"))
    if prof.full_linear_inputs:
        terms.append(("linear inputs", p * (2 * d + h * dh + f) + cross * p * (d + h * dh),
                      "p*(2d + h*d_h + f)" + (" + cross p*(d + h*d_h)" if cross else "")))
    if prof.rank:
        terms.append(_lowrank_term(arch, prof, p, device, a))
    if prof.dense_delta:  # F.linear(x.to(dW.dtype), dW) keeps the adapter-dtype input of each adapted module
        from peftkb.calculators.params import select_modules

        mods = select_modules(arch, prof.target_keys, strict=False)
        terms.append(("dense delta inputs", sum(a * m.d_in for m in mods) / arch.n_layers,
                      f"{a}*d_in per adapted module ({len(mods)} modules / {arch.n_layers} blocks)"))
    if prof.dense_rotation:  # x (for x @ R) and the frozen layer's output (for * boft_s), model dtype
        from peftkb.calculators.params import select_modules

        mods = select_modules(arch, prof.target_keys, strict=False)
        terms.append(("rotation inputs and outputs", sum(p * (m.d_in + m.d_out) for m in mods) / arch.n_layers,
                      f"p*(d_in + d_out) per adapted module ({len(mods)} modules / {arch.n_layers} blocks)"))
    if prof.ia3:
        # k/v outputs are scaled in the model dtype; the FFN input is first cast to the vector's (adapter) dtype
        terms.append(("ia3", p * 2 * h_kv * dh + a * f, f"p*2*h_kv*d_h + {a}f"))
    if prof.adapters_per_block:
        m = prof.bottleneck
        terms.append(("adapters", prof.adapters_per_block * p * (d + 2 * m),
                      f"{prof.adapters_per_block}*p*(d + 2m), m={m}"))
    return terms


def _lowrank_term(arch: Architecture, prof: Profile, p: int, device: str = "cuda",
                  a: int = 4) -> tuple[str, float, str]:
    """Adapter inputs and rank-r intermediates of the targeted modules, averaged per block."""
    from peftkb.calculators.params import select_modules

    modules = select_modules(arch, prof.target_keys, strict=False) if prof.target_keys else []
    blocks = arch.n_layers
    total = 0.0
    if a == p and prof.lora_dropout == 0 and prof.keeps_adapter_input:
        # the cast to the adapter dtype returns x itself: modules reading one input share what they keep
        groups = {(m.stack, m.layer, _input_group(m)): m.d_in for m in modules}
        total += sum(v * a for v in groups.values())
        formula = f"{a}*d_in per distinct input + {a}r per module"
    else:
        kept = prof.keeps_adapter_input  # MiSS, TinyLoRA: only the rank-r intermediate (and a dropout mask)
        total += sum(m.d_in * a for m in modules) if kept else 0
        formula = f"{a}*d_in + {a}r per module" if kept else f"{a}r per module (the adapter input is not kept)"
        if prof.lora_dropout > 0:  # bool mask on CUDA, an fp32 noise tensor on CPU
            mask_b = 1 if device == "cuda" else a
            total += sum(m.d_in * mask_b for m in modules)
            formula += f" + {mask_b}*d_in (dropout mask)"
    total += len(modules) * prof.rank * a
    if prof.dora:
        total += sum(m.d_out * p for m in modules)
        formula += " + p*d_out (DoRA)"
    return ("lora", total / blocks, formula + f", r={prof.rank}, {len(modules)} modules / {blocks} blocks")


def _input_group(m: Any) -> str:
    if m.cross:
        return "cross_kv" if set(m.roles) & {"k", "v"} else ("cross_q" if "q" in m.roles else "cross_o")
    if set(m.roles) & {"q", "k", "v"}:
        return "attn_in"
    if "o" in m.roles:
        return "attn_out"
    if set(m.roles) & {"gate", "up"}:
        return "ffn_in"
    if "down" in m.roles:
        return "ffn_mid"
    return m.name


def _head_terms(arch: Architecture, prof: Profile, p: int, tokens: int) -> tuple[int, int]:
    if arch.family in ("bert", "roberta"):
        return 0, 0
    norm_b, _ = _norm_bytes(arch, p, prof.full_linear_inputs)
    lm_in = p * arch.d_model if prof.full_linear_inputs else 0
    head = tokens * (arch.vocab_size * (p + 4) + norm_b + lm_in)
    transient = tokens * arch.vocab_size * 8
    return int(head), int(transient)


def parse_size(text: str) -> int:
    """'24GB', '24GiB', '80G', '512MB', '1.5TiB' -> bytes; a unit is required ('24' or '24B' is refused).

    GB and GiB both mean 2**30 (as GPU memory is quoted: a "24 GB" card holds 24 GiB); K, M and T alike.
    """
    match = re.fullmatch(r"\s*([0-9]{1,15}(?:\.[0-9]{1,15})?|\.[0-9]{1,15})\s*([KMGT])(?:i?B)?\s*", text or "",
                         re.IGNORECASE)
    if not match:
        raise UsageError(f"--memory: cannot read '{text}': give a number and a unit, e.g. 24GB, 80GiB, 512MB "
                         "(GB = GiB = 2**30 bytes)")
    number, unit = float(match.group(1)), match.group(2).upper()
    value = number * {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[unit]
    if not math.isfinite(value) or value < 2**20:
        raise UsageError(f"--memory must be at least 1 MiB, not '{text}'")
    if value > 2**60:
        raise UsageError(f"--memory '{text}' is more than any device holds (limit 2**60 bytes)")
    return int(value)
