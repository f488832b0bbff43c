"""`peftkb run METHOD`: apply a reference implementation to a small model and train it briefly.

torch and transformers are imported inside the command, so `import peftkb.cli` stays light.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import resource
import time
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from peftkb import query
from peftkb.cli.common import FORMAT_OPTION, complete_method_id, index
from peftkb.cli.output import Format, emit
from peftkb.errors import UsageError, did_you_mean

TINY_MODELS = ("tiny-bert", "tiny-t5", "tiny-llama", "tiny-gpt2")
COLUMNS = ["field", "value"]

#: The bundled models as `peftkb run` builds them (random init, no download): `_core.tiny_model`'s
#: configs, widened and deepened so that every method's catalog defaults fit: 6 layers (AdapterDrop drops
#: 5), d_model 128 (Compacter's d_model // 32 bottleneck splits into 4 PHM blocks; KronA's 32 x 32 factors
#: divide LLaMA's grouped-query v_proj of 64), 256 positions (100 prompt tokens + the 32-token input) and
#: a 128-token vocabulary (WARP's [MASK] id 103). Not covered: defaults that need widths in multiples of
#: 256 (C3A's block_size, VB-LoRA's vector_length); a 256-wide model made the matrix test too slow and
#: GPT-2's 0.2 init too unstable at lr 1e-2, so those defaults are the catalog's to revisit.
RUN_SIZES: dict[str, dict[str, int]] = {
    "tiny-bert": dict(hidden_size=128, num_hidden_layers=6, intermediate_size=256, vocab_size=128,
                      max_position_embeddings=256),
    "tiny-t5": dict(d_model=128, d_kv=32, d_ff=256, num_layers=6, num_decoder_layers=6, vocab_size=128),
    "tiny-llama": dict(hidden_size=128, head_dim=32, num_hidden_layers=6, intermediate_size=256, vocab_size=128,
                       max_position_embeddings=256),
    "tiny-gpt2": dict(n_embd=128, n_layer=6, vocab_size=128, n_positions=256),
}
BATCH_SIZE, SEQ_LEN = 8, 32   # the synthetic task's batch
MAX_STEPS = 100_000
MAX_SEED = 2**63 - 1          # torch.manual_seed takes a 64-bit seed

#: The bundled models each method refuses, and why (checked by tests/reference_impls/test_run_matrix.py).
#: A method not listed runs on all four.
UNSUPPORTED: dict[str, tuple[str, ...]] = {
    "adaption-prompt": ("tiny-bert", "tiny-t5", "tiny-gpt2"),   # LLaMA-family rotary attention only
    "attention-fusion": ("tiny-t5",),
    "c3a": TINY_MODELS,                # block_size 256 must divide d_in and d_out (all 128 here)
    "trainable-tokens": TINY_MODELS,   # no token is selected by default
    "vblora": TINY_MODELS,             # vector_length 256 must divide d_in and d_out
    "adamss": ("tiny-gpt2",),          # nn.Linear only, as peft (GPT-2 has Conv1D)
    "autopeft": ("tiny-t5", "tiny-gpt2"),
    "bitfit": ("tiny-t5", "tiny-llama"),          # no bias terms: nothing to train
    "cartridge": ("tiny-bert", "tiny-t5"),   # initialised from a causal decoder's key/value cache
    "ciat": ("tiny-bert", "tiny-llama", "tiny-gpt2"),
    "delora": ("tiny-gpt2",),          # nn.Linear only, as peft (GPT-2 has Conv1D)
    "cpt": ("tiny-bert", "tiny-t5"),   # a causal LM's next-token loss over context and input
    "coda": ("tiny-t5", "tiny-llama", "tiny-gpt2"),
    "hadamard-adapter": ("tiny-t5", "tiny-llama"),
    "kernel-mix": ("tiny-gpt2",),
    "ln-tuning": ("tiny-bert", "tiny-t5", "tiny-gpt2"),   # LLaMA's RMSNorm gains
    "lokr": ("tiny-gpt2",),            # nn.Linear only, as peft (GPT-2 has Conv1D)
    "lst": ("tiny-t5",),
    "longlora": ("tiny-bert", "tiny-t5", "tiny-gpt2"),   # S²-Attn re-implements Llama's attention
    "pissa": ("tiny-llama",),   # r = 128 exceeds the grouped-query k/v width 64
    "s3delta-m": ("tiny-t5", "tiny-gpt2"),
    "s4": ("tiny-t5", "tiny-gpt2"),
    "shadow": ("tiny-bert", "tiny-t5", "tiny-gpt2"),     # mirrors a Llama-family causal LM's decoder
    "u-s-bitfit": ("tiny-t5", "tiny-llama"),      # no bias terms: nothing to train
    "unipelt": ("tiny-t5", "tiny-gpt2"),
    "warp": ("tiny-t5", "tiny-llama", "tiny-gpt2"),
    "xlora": TINY_MODELS,             # n_adapters = 0 by default: no experts to mix (--set n_adapters=K)
    "xattn-tuning": ("tiny-bert", "tiny-llama", "tiny-gpt2"),
}


def supported_models(method_id: str) -> list[str]:
    return [name for name in TINY_MODELS if name not in UNSUPPORTED.get(method_id, ())]


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


def run(
    method: str = typer.Argument(..., metavar="METHOD", help="Method id, name or alias.",
                                 autocompletion=complete_method_id),
    model: str = typer.Option("tiny-llama", "--model", "-m",
                              help="tiny-bert, tiny-t5, tiny-llama, tiny-gpt2, or a local Hugging Face model folder."),
    steps: int = typer.Option(20, "--steps", "-n", help=f"Training steps, 1 to {MAX_STEPS:,}."),
    device: Device = typer.Option(Device.cpu, "--device", help="cpu or cuda."),
    lr: float = typer.Option(1e-2, "--lr", help="Adam learning rate, a finite number > 0."),
    settings: list[str] = typer.Option([], "--set", metavar="FIELD=VALUE",
                                       help="Override a field of the method's config, e.g. --set r=4 (repeatable)."),
    seed: int = typer.Option(0, "--seed", help="Seed for init and data, 0 to 2^63 - 1."),
    fmt: Format = FORMAT_OPTION,
) -> None:
    """Train a method's reference implementation on a synthetic task; report parameters, loss, time, memory.

    The bundled models are small random-init BERT, T5, LLaMA (grouped-query attention) and GPT-2 models
    (6 layers, d_model 128). Most methods run on all four; these run only on the models listed (the others
    are refused with the reason): {SUPPORT}. A run that trains no parameter, or whose loss never changes,
    is refused (exit 2).
    """
    _check_options(steps, lr, seed)
    import reference_impls

    m = query.find_method(index(), method)  # NotFoundError, with suggestions, for an unknown method
    if m.id not in reference_impls.IDS:
        raise UsageError(f"'{m.id}' has no reference implementation; methods with one: "
                         + ", ".join(sorted(reference_impls.IDS)))

    import torch

    from reference_impls._core import n_params, train

    if device is Device.cuda and not torch.cuda.is_available():
        raise UsageError("--device cuda, but torch sees no CUDA device")
    torch.manual_seed(seed)
    base = load_model(model, seed)
    config_cls, apply = reference_impls.METHODS[m.id]
    config = parse_config(m, config_cls, settings, steps, base)
    total = n_params(base)  # parameters of the model as loaded, before any method packs or adds weights
    adapted, batch = prepare_run(m.id, model, base, config, seed)
    adapted.to(device.value)
    batch = {k: v.to(device.value) for k, v in batch.items()}
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    if trainable == 0:
        raise UsageError(f"{m.id} on {describe(model, base)}: the method selects no trainable parameter on this "
                         "model, so there is nothing to train" + _elsewhere(m.id, model))

    if device is Device.cuda:
        torch.cuda.reset_peak_memory_stats()
    times: list[float] = []
    clock = [time.perf_counter()]

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(f"{m.id} on {model}", total=steps, loss="-")

        def on_step(step: int, loss: float) -> None:
            if device is Device.cuda:
                torch.cuda.synchronize()
            now = time.perf_counter()
            times.append(now - clock[0])
            clock[0] = now
            progress.update(task, advance=1, loss=f"{loss:.4f}")

        try:
            losses = train(adapted, batch, steps, lr, on_step=on_step, **reference_impls.hooks(m.id, adapted, config))
        except ValueError as exc:  # an input the adapted model refuses, e.g. prompt + input beyond its positions
            raise UsageError(f"{m.id} on {describe(model, base)}: {_first_line(exc)}") from None
    final = final_loss(adapted, batch)
    check_losses(m.id, describe(model, base), [*losses, final])

    timed = times[1:] or times  # the first step pays one-off costs (allocation, lazy init)
    if device is Device.cuda:
        peak, kind = torch.cuda.max_memory_allocated(), "cuda_max_memory_allocated"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "cpu_peak_rss"  # Linux: KiB
    record: dict[str, Any] = {
        "method": m.id, "model": model, "device": device.value, "steps": steps,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()},
        "trainable_params": trainable, "base_params": total, "trainable_pct": round(100 * trainable / total, 4),
        "loss_start": round(losses[0], 4), "loss_end": round(final, 4),
        "time_per_step_ms": round(1000 * sum(timed) / len(timed), 3),
        "peak_memory_mb": round(peak / 2**20, 1), "peak_memory_kind": kind,
    }
    rows = [{"field": k, "value": v} for k, v in record.items() if k != "config"]
    rows.insert(4, {"field": "config", "value": ", ".join(f"{k}={v}" for k, v in record["config"].items()) or "-"})
    emit(rows, fmt, columns=COLUMNS, title=f"peftkb run {m.id}", data=record)


# -- the one boundary: every option and --set value is checked here, before any work ------------------
def _check_options(steps: int, lr: float, seed: int) -> None:
    if not 1 <= steps <= MAX_STEPS:
        raise UsageError(f"--steps {steps}: must be between 1 and {MAX_STEPS:,}")
    if not math.isfinite(lr) or lr <= 0:
        raise UsageError(f"--lr {lr}: must be a finite number > 0")
    if not 0 <= seed <= MAX_SEED:
        raise UsageError(f"--seed {seed}: must be between 0 and 2^63 - 1")


def parse_config(method: Any, config_cls: type, settings: list[str], steps: int, model: Any) -> Any:
    """The method's default config with --set overrides, each parsed as its field's type and checked
    against the range its catalog entry declares (on this model) or, where none is declared, against
    the sign of its default: a count or size that defaults to a positive number must stay positive."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    values: dict[str, Any] = {}
    for item in settings:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise UsageError(f"--set expects FIELD=VALUE with FIELD one of: {', '.join(fields) or '(none)'}"
                             + (did_you_mean(key, fields) if key else ""))
        default = fields[key].default
        try:
            if isinstance(default, bool):
                if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(raw)
                values[key] = raw.lower() in ("true", "1", "yes")
            elif isinstance(default, tuple):
                values[key] = tuple(_atom(v.strip()) for v in raw.split(",") if v.strip())
            elif default is None:  # optional (e.g. CIAT's bottleneck): an int, or "none"
                values[key] = None if raw.strip().lower() == "none" else int(raw)
            else:
                values[key] = type(default)(raw)
        except ValueError:
            kind = "int or none" if default is None else type(default).__name__
            raise UsageError(f"--set {key}: '{raw}' is not a valid {kind}") from None
        _check_value(method.id, key, values[key], default)
    if values:
        _check_ranges(method, values, model)
    if "total_steps" in fields and "total_steps" not in values:
        values["total_steps"] = steps  # AdaLoRA's budget schedule spans the whole run
    return config_cls(**values)


def _check_value(method_id: str, key: str, value: Any, default: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"--set {key}={value}: must be a finite number")
    positive = isinstance(default, (int, float)) and not isinstance(default, bool) and default > 0
    if value < 0 and (default is None or positive or default == 0):
        raise UsageError(f"--set {key}={value}: {method_id}'s {key} cannot be negative")
    if value == 0 and isinstance(default, int) and not isinstance(default, bool) and default > 0:
        raise UsageError(f"--set {key}=0: {method_id}'s {key} is a count or size and must be at least 1")


def _check_ranges(method: Any, values: dict[str, Any], model: Any) -> None:
    from peftkb.calculators.architecture import architecture_from_config
    from peftkb.calculators.params import check_values

    arch = architecture_from_config(model.config.to_dict(), name=getattr(model.config, "model_type", "model"))
    check_values(method, {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}, arch)


def _atom(raw: str) -> int | str:
    try:
        return int(raw)
    except ValueError:
        return raw


# -- model, method and the training check ------------------------------------------------------------
def load_model(name: str, seed: int):
    """A bundled model at RUN_SIZES, or a local Hugging Face model folder (one clear line if unreadable)."""
    from reference_impls._core import FAMILIES, tiny_model

    if name in TINY_MODELS:
        return tiny_model(name, seed=seed, **RUN_SIZES[name])
    path = Path(name)
    if not path.is_dir():
        raise UsageError(f"unknown model '{name}'" + did_you_mean(name, TINY_MODELS)
                         + f"; use {', '.join(TINY_MODELS)} or a local model folder")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UsageError(f"{config_file}: not a file; a model folder needs a Hugging Face config.json")
    import transformers as tf

    try:
        config = tf.AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{config_file}: not a readable Hugging Face config: {_first_line(exc)}") from None
    family = FAMILIES.get(config.model_type)
    if family is None:
        raise UsageError(f"model type '{config.model_type}' is not supported; supported: {', '.join(sorted(FAMILIES))}")
    cls = {"bert": tf.AutoModelForMaskedLM, "t5": tf.AutoModelForSeq2SeqLM}.get(family, tf.AutoModelForCausalLM)
    try:
        return cls.from_pretrained(path, local_files_only=True).eval()
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise UsageError(f"{path}: cannot load the model's weights: {_first_line(exc)}") from None


def describe(model_name: str, model: Any) -> str:
    """'tiny-bert (bert)': the model and its architecture family."""
    return f"{model_name} ({getattr(model.config, 'model_type', '?')})"


def prepare_run(method_id: str, model_name: str, base: Any, config: Any, seed: int) -> tuple[Any, dict]:
    """Apply the method to `base` and build the synthetic batch; a method that cannot adapt this model
    (it raises ValueError or NotImplementedError) is a UsageError naming the model and its family."""
    import reference_impls
    from reference_impls._core import synthetic_batch

    _, apply = reference_impls.METHODS[method_id]
    batch = synthetic_batch(base, batch_size=BATCH_SIZE, seq_len=SEQ_LEN, seed=seed)
    where = describe(model_name, base)
    try:
        # methods that pick their parameters from data (Child-Tuning D, FISH, SAM, LT-SFT, ...) get the task's batch
        wants_data = "data" in inspect.signature(apply).parameters
        adapted = apply(base, config, data=[batch]) if wants_data else apply(base, config)
    except (NotImplementedError, ValueError) as exc:  # e.g. prefix tuning on T5, an unknown target
        raise UsageError(f"{method_id} on {where}: {_first_line(exc)}" + _elsewhere(method_id, model_name)) from None
    return adapted, batch


def _elsewhere(method_id: str, model_name: str) -> str:
    others = [n for n in supported_models(method_id) if n != model_name]
    return f" (bundled models it runs on: {', '.join(others)})" if others and model_name in TINY_MODELS else ""


def final_loss(model: Any, batch: dict) -> float:
    """The task loss after the last step (the loss _core.train reports is the one before each step)."""
    import torch

    model.train()
    with torch.no_grad():
        loss = model(**batch).loss.item()
    model.eval()
    return loss


def check_losses(method_id: str, where: str, losses: list[float]) -> None:
    if not all(math.isfinite(x) for x in losses):
        raise UsageError(f"{method_id} on {where}: the loss became {losses[-1]} (not finite); try a smaller --lr")
    if len(set(losses)) == 1:
        raise UsageError(f"{method_id} on {where}: the loss never changed ({losses[0]:.6f}) in {len(losses) - 1} "
                         "steps, so training had no effect")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _support_text() -> str:
    return "; ".join(f"{m}: {', '.join(supported_models(m)) or 'none with its defaults'}" for m in sorted(UNSUPPORTED))


run.__doc__ = (run.__doc__ or "").replace("{SUPPORT}", _support_text())


def register(app: typer.Typer) -> None:
    app.command("run")(run)
