"""The training loop behind `peftkb train`: one process, or many under Hugging Face accelerate.

Batches. One optimizer step consumes a global batch of `batch_size * grad_accum * world` training rows,
taken in order from the epoch's permutation (fixed by seed and epoch, see data.epoch_order). The step's
rows are cut into micro-batches of `batch_size`; micro-batch (j, r) -- accumulation step j on process r --
is chunk c = j * world + r. The loss of a step is the mean of its micro-batches' mean losses; DDP averages
the processes' gradients and we divide by grad_accum, so one process with grad_accum = 2 and two
processes with grad_accum = 1 compute the same update from the same rows.

Randomness. Before each micro-batch the torch generator is seeded from (seed, step, c): dropout masks
depend on which rows are seen and when, not on the process or on how the run was interrupted. With the
optimizer and scheduler state in the checkpoint, a resumed run repeats the uninterrupted one bit for bit.

Distribution. accelerate provides the process group (NCCL on GPUs, gloo on CPUs), the device and the DDP
wrapper. FSDP2 is applied with torch's `fully_shard` directly, one group per transformer block and one for
the rest, after the method has frozen the base: accelerate 1.16 turns its FSDP plugin on only for GPU-like
process groups (state.py), and the same code path then runs on CPUs, where the tests run it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from peftkb.errors import UsageError
from peftkb.train import data as D
from peftkb.train import outdir


@dataclass
class Options:
    """Every choice of a training run (the command's options, already parsed)."""

    method: str                       # catalog id with a reference implementation
    model: str                        # a local folder or a bundled model name
    data: Path
    out: Path
    task: str | None = None           # causal-lm | classification; None: from the data's shape
    settings: list[str] = field(default_factory=list)  # FIELD=VALUE overrides of the method's config
    max_steps: int | None = None      # optimizer steps; overrides epochs
    epochs: int = 1
    lr: float = 2e-4
    batch_size: int = 8               # rows per micro-batch, per process
    grad_accum: int = 1
    warmup_steps: int = 0             # linear warm-up of the learning rate, then constant
    seq_len: int = 256                # tokens per row (longer rows are truncated)
    eval_share: float = 0.1           # share of the rows held out
    eval_every: int = 50              # optimizer steps between evaluations (and at the end)
    save_every: int = 50              # optimizer steps between checkpoints (and at the end)
    bf16: bool = False
    gradient_checkpointing: bool = False
    seed: int = 0
    merge: bool = False
    resume: bool = False
    overwrite: bool = False
    device: str = "auto"              # auto | cpu | cuda
    distributed: str = "ddp"          # ddp | fsdp, when more than one process runs
    progress: bool = True

    def fingerprint(self, data_sha256: str, world: int) -> str:
        """What a checkpoint must share with the run that resumes it (not the run's length or outputs)."""
        keep = {k: v for k, v in dataclasses.asdict(self).items()
                if k not in ("max_steps", "epochs", "eval_every", "save_every", "merge", "resume", "overwrite",
                             "out", "progress", "data")}
        keep.update(data_sha256=data_sha256, world=world)
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the run ---------------------------------------------------------------------------------------------
def train(opts: Options, make_config: Callable[[int, Any], Any]) -> dict[str, Any]:
    """Train, evaluate, save; returns the record written into peftkb-train.json. `make_config(total_steps,
    model)` builds the method's config for the loaded model (AdaLoRA's budget schedule spans the run)."""
    import torch
    from accelerate import Accelerator

    import reference_impls
    from peftkb.train import models

    if opts.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda, but torch sees no CUDA device")
    cpu = opts.device == "cpu" or not torch.cuda.is_available()
    acc = Accelerator(cpu=cpu)
    world, rank, main = acc.num_processes, acc.process_index, acc.is_main_process
    fsdp = world > 1 and opts.distributed == "fsdp"
    device = acc.device

    dataset = D.read(opts.data)
    task = D.task_for(dataset, opts.task)
    labels = dataset.labels if task == "classification" else None
    train_rows, eval_rows = D.split(dataset.rows, opts.eval_share, opts.seed)
    global_batch = opts.batch_size * opts.grad_accum * world
    steps_per_epoch = len(train_rows) // global_batch
    if steps_per_epoch == 0:
        raise UsageError(f"{opts.data}: {len(train_rows)} training rows, fewer than one global batch of "
                         f"{global_batch} (batch size {opts.batch_size} x grad-accum {opts.grad_accum} x "
                         f"{world} process(es)); lower --batch-size or add rows")
    total_steps = opts.max_steps if opts.max_steps is not None else opts.epochs * steps_per_epoch

    folder = models.resolve(opts.model)
    torch.manual_seed(opts.seed)  # the same initial adapter on every process
    model, tokenizer = models.load(folder, task, labels)
    method_config = make_config(total_steps, model)
    base_keys = sorted(model.state_dict())
    heads = [p for n, p in model.named_parameters() if n.split(".")[0] in _head_names()]
    train_enc = D.encode(train_rows, tokenizer, task, labels or [], opts.seq_len)
    eval_enc = D.encode(eval_rows, tokenizer, task, labels or [], opts.seq_len)
    pad_id = tokenizer.pad_token_id

    config_cls, apply = reference_impls.METHODS[opts.method]
    try:
        if "data" in _params(apply):  # methods that choose what to train from the task's data
            model = apply(model, method_config, data=[D.collate(train_enc[:opts.batch_size], pad_id)])
        else:
            model = apply(model, method_config)
    except (NotImplementedError, ValueError) as exc:
        raise UsageError(f"{opts.method} on {opts.model}: {exc}") from None
    for p in heads:  # a new classification head is trained by every method
        p.requires_grad_(True)
    if opts.gradient_checkpointing:
        hf = _hf_model(model)
        if hasattr(hf, "activation_checkpointing_enable"):  # transformers >= 5.x's name for it
            hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total_params = sum(p.numel() for p in model.parameters())
    if trainable == 0:
        raise UsageError(f"{opts.method} on {opts.model}: nothing to train (0 trainable parameters)")
    hooks = reference_impls.hooks(opts.method, model, method_config)
    if hooks and opts.resume:
        raise UsageError(f"--resume: {opts.method} keeps training state outside its parameters "
                         f"({', '.join(hooks)}), which a checkpoint does not hold; start over instead")

    # every input is checked: only now is anything written
    if main:
        outdir.prepare(opts.out, resume=opts.resume, overwrite=opts.overwrite)
    acc.wait_for_everyone()

    model.to(device)
    if fsdp:
        _fully_shard(model, device)
        sharded = sum(p.numel() for p in model.parameters() if p.requires_grad)  # DTensor numel: the global size
        if sharded != trainable:
            raise RuntimeError(f"FSDP changed the trainable count: {trainable} before sharding, {sharded} after")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=0.0)
    warmup = opts.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    if world > 1 and not fsdp:
        model = acc.prepare_model(model)  # DDP
    fingerprint = opts.fingerprint(_sha256(opts.data), world)

    start_step = 0
    if opts.resume:
        start_step = _load_checkpoint(opts.out / outdir.CHECKPOINT, model, optimizer, scheduler, fingerprint, fsdp)
        if start_step >= total_steps:
            raise UsageError(f"--resume: the checkpoint is at step {start_step}, and this run stops at "
                             f"{total_steps}; raise --max-steps or --epochs")
    record = {
        "method": opts.method, "method_config": _plain(dataclasses.asdict(method_config)), "model": opts.model,
        "model_folder": str(folder), "task": task, "labels": labels, "base_keys_sha256":
            hashlib.sha256("\n".join(base_keys).encode()).hexdigest()[:16],
        "options": _plain({k: v for k, v in dataclasses.asdict(opts).items() if k != "progress"}),
        "fingerprint": fingerprint, "world_size": world, "distributed": ("fsdp" if fsdp else "ddp") if world > 1 else None,
        "trainable_params": trainable, "total_params": total_params,
        "rows": {"train": len(train_rows), "eval": len(eval_rows)}, "global_batch": global_batch,
        "versions": _versions(), "status": "running",
    }
    if main:
        outdir.write_json(opts.out / outdir.MARKER, record)
        metrics_path = opts.out / outdir.METRICS
        kept = [m for m in outdir.read_metrics(metrics_path) if m["step"] <= start_step] if opts.resume else []
        outdir.write_text(metrics_path, "".join(json.dumps(m) + "\n" for m in kept))

    def log(entry: dict[str, Any]) -> None:
        if main:
            with open(opts.out / outdir.METRICS, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")

    def evaluate(step: int) -> dict[str, Any] | None:
        if not eval_enc:
            return None
        result = _evaluate(model, eval_enc, opts.batch_size, pad_id, device, task, opts.bf16)
        entry = {"step": step, **result}
        log(entry)
        return entry

    def save(step: int) -> None:
        _save_checkpoint(opts.out / outdir.CHECKPOINT, acc.unwrap_model(model), optimizer, scheduler, step,
                         fingerprint, fsdp, main)

    progress = _Progress(opts.progress and main, f"{opts.method} on {Path(opts.model).name}", total_steps,
                         start_step, device)
    last_eval, step_losses = None, []
    with progress:
        for step in range(start_step, total_steps):
            t0 = time.perf_counter()
            loss, tokens = _step(model, optimizer, scheduler, hooks, train_enc, step, opts, world, rank,
                                 steps_per_epoch, pad_id, device, fsdp)
            loss_t = torch.tensor([loss, float(tokens)], device=device)
            if world > 1:
                loss_t = acc.reduce(loss_t, reduction="sum")
                loss_t[0] /= world
            step_loss, step_tokens = loss_t[0].item(), int(loss_t[1].item())
            if not math.isfinite(step_loss):
                raise UsageError(f"step {step + 1}: the loss is {step_loss}; lower --lr")
            seconds = time.perf_counter() - t0
            memory = _memory_mb(device)
            step_losses.append(step_loss)
            log({"step": step + 1, "epoch": step // steps_per_epoch, "loss": step_loss,
                 "lr": scheduler.get_last_lr()[0], "tokens": step_tokens,
                 "tokens_per_s": round(step_tokens / seconds, 1), "memory_mb": memory})
            progress.update(step_loss, step_tokens / seconds, memory)
            done = step + 1
            if done % opts.eval_every == 0 or done == total_steps:
                last_eval = evaluate(done)
            if done % opts.save_every == 0 or done == total_steps:
                save(done)

    unwrapped = acc.unwrap_model(model)
    state = _full_trainable(unwrapped, fsdp)
    if main:
        from safetensors.torch import save_file

        outdir.write_with(opts.out / outdir.ADAPTER, lambda tmp: save_file(state, str(tmp)))
    summary = {"steps": total_steps, "resumed_from": start_step if opts.resume else None,
               "loss_first": step_losses[0] if step_losses else None, "loss_last": step_losses[-1] if step_losses else None,
               "eval": last_eval}
    if main and opts.merge:
        merged_dir = opts.out / outdir.MERGED
        outdir.write_with(merged_dir, lambda tmp: write_merged(opts.out, tmp))
        summary["merged"] = str(merged_dir)
    if main:
        record.update(status="finished", summary=summary)
        outdir.write_json(opts.out / outdir.MARKER, record)
    acc.wait_for_everyone()
    return {**record, "out": str(opts.out)}


def _head_names() -> tuple[str, ...]:
    from peftkb.bench.models import HEAD_NAMES

    return HEAD_NAMES


def _params(fn: Callable[..., Any]) -> set[str]:
    import inspect

    return set(inspect.signature(fn).parameters)


def _hf_model(model: Any) -> Any:
    """The transformers model inside whatever `apply` returned (prompt tuning wraps it)."""
    from transformers import PreTrainedModel

    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            return module
    raise UsageError("--gradient-checkpointing: no transformers model inside the adapted model")


def _fully_shard(model: Any, device: Any) -> None:
    """FSDP2: one shard group per transformer block (the HF model's `_no_split_modules`), one for the rest."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    blocks = set(getattr(_hf_model(model), "_no_split_modules", None) or ())
    mesh = init_device_mesh(device.type, (int(os.environ.get("WORLD_SIZE", "1")),))
    for module in list(model.modules()):
        if module is not model and type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)


def _rows_for(enc: list[dict[str, Any]], step: int, chunk: int, opts: Options, world: int,
              steps_per_epoch: int) -> list[dict[str, Any]]:
    epoch, pos = divmod(step, steps_per_epoch)
    order = D.epoch_order(len(enc), opts.seed, epoch)
    start = (pos * opts.grad_accum * world + chunk) * opts.batch_size
    return [enc[i] for i in order[start:start + opts.batch_size]]


def _step(model, optimizer, scheduler, hooks, enc, step, opts, world, rank, steps_per_epoch, pad_id, device,
          fsdp) -> tuple[float, int]:
    """One optimizer step over grad_accum micro-batches; returns (mean micro-batch loss, tokens seen)."""
    import torch

    model.train()
    losses, tokens = [], 0
    for j in range(opts.grad_accum):
        chunk = j * world + rank
        batch = {k: v.to(device) for k, v in
                 D.collate(_rows_for(enc, step, chunk, opts, world, steps_per_epoch), pad_id).items()}
        tokens += int(batch["attention_mask"].sum())
        torch.manual_seed(((opts.seed * 1_000_003 + step) * 65_537 + chunk) % 2**63)  # per micro-batch, see above
        last = j == opts.grad_accum - 1
        if fsdp:
            model.set_requires_gradient_sync(last)
            sync = contextlib.nullcontext()
        else:
            sync = model.no_sync() if (world > 1 and not last) else contextlib.nullcontext()
        with sync:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=opts.bf16):
                loss = model(**batch).loss
                total = loss + hooks["extra_loss"]() if "extra_loss" in hooks else loss
            (total / opts.grad_accum).backward()
        losses.append(loss.detach().float())
    optimizer.step()
    scheduler.step()
    if "after_step" in hooks:
        hooks["after_step"](step)
    optimizer.zero_grad(set_to_none=True)
    return torch.stack(losses).mean().item(), tokens


def _evaluate(model, enc, batch_size, pad_id, device, task, bf16) -> dict[str, Any]:
    """Held-out loss (token-weighted for causal-lm), and accuracy for classification. Every process
    evaluates all held-out rows (FSDP needs every process in every forward), so all agree."""
    import torch

    model.eval()
    loss_sum, weight, correct = 0.0, 0, 0
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(enc), batch_size):
            batch = {k: v.to(device) for k, v in D.collate(enc[i:i + batch_size], pad_id).items()}
            out = model(**batch)
            if task == "classification":
                n = batch["labels"].numel()
                correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
            else:
                n = int((batch["labels"][:, 1:] != -100).sum())  # the tokens the shifted loss averages over
            loss_sum += out.loss.float().item() * n
            weight += n
    result = {"eval_loss": loss_sum / max(weight, 1)}
    if task == "classification":
        result["eval_accuracy"] = correct / len(enc)
    return result


def _memory_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    with open("/proc/self/statm") as fh:  # resident set size, Linux
        return round(int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


# -- saving and loading --------------------------------------------------------------------------------
def _full_trainable(model, fsdp: bool) -> dict[str, Any]:
    """Trainable parameters as whole CPU tensors (under FSDP every process takes part in the gather)."""
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            t = p.full_tensor() if fsdp else p
            out[name] = t.detach().contiguous().cpu()
    return out


def _save_checkpoint(path, model, optimizer, scheduler, step, fingerprint, fsdp, main) -> None:
    import torch

    trainable = _full_trainable(model, fsdp)
    buffers = {n: b.detach().cpu() for n, b in model.named_buffers()}
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        optim = get_optimizer_state_dict(model, optimizer,
                                         options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        optim = optimizer.state_dict()
    if main:
        state = {"format": 1, "step": step, "fingerprint": fingerprint, "trainable": trainable, "buffers": buffers,
                 "optimizer": optim, "scheduler": scheduler.state_dict()}
        outdir.write_with(path, lambda tmp: torch.save(state, tmp))


def _load_checkpoint(path, model, optimizer, scheduler, fingerprint, fsdp) -> int:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a checkpoint peftkb wrote is complete (atomic rename); anything else is foreign
        raise UsageError(f"--resume: {path} is not a readable checkpoint ({type(exc).__name__})") from None
    if state.get("fingerprint") != fingerprint:
        raise UsageError(f"--resume: {path} was written by a run with other settings (model, data, method config, "
                         "learning rate, batch, seed or process count); only --max-steps and --epochs may change")
    target = getattr(model, "module", model)  # under DDP the parameters live in .module
    params = dict(target.named_parameters())
    buffers = dict(target.named_buffers())
    if set(state["trainable"]) != {n for n, p in params.items() if p.requires_grad}:
        raise UsageError(f"--resume: {path} does not hold this model's trainable parameters")
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        set_model_state_dict(target, {**state["trainable"], **state["buffers"]},
                             options=StateDictOptions(full_state_dict=True, strict=False))
        set_optimizer_state_dict(target, optimizer, state["optimizer"],
                                 options=StateDictOptions(full_state_dict=True))
    else:
        with torch.no_grad():
            for name, tensor in state["trainable"].items():
                params[name].copy_(tensor)
            for name, tensor in state["buffers"].items():
                if name in buffers:
                    buffers[name].copy_(tensor)
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"])


def load(out: Path, device: str = "cpu") -> Any:
    """The trained model of a `peftkb train` output folder: base model + method + adapter weights."""
    import torch

    import reference_impls
    from reference_impls._core import load_trainable
    from peftkb.train import models

    marker = out / outdir.MARKER
    if not marker.is_file():
        raise UsageError(f"{out}: no {outdir.MARKER}; not a peftkb train output")
    record = json.loads(marker.read_text(encoding="utf-8"))
    config_cls, apply = reference_impls.METHODS[record["method"]]
    config = config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in record["method_config"].items()})
    torch.manual_seed(record["options"]["seed"])
    folder = Path(record["model_folder"])
    model, _ = models.load(folder, record["task"], record["labels"])
    heads = [p for n, p in model.named_parameters() if n.split(".")[0] in _head_names()]
    if "data" in _params(apply):
        # methods that select entries from data rebuild their masks from the same rows
        raise UsageError(f"{record['method']} picks what it trains from the data; load it inside training code")
    model = apply(model, config)
    for p in heads:
        p.requires_grad_(True)
    load_trainable(model, out / outdir.ADAPTER)
    return model.to(device).eval()


def write_merged(out: Path, target: Path) -> None:
    """The base model with the trained update folded in, as a plain transformers folder (+ tokenizer)."""
    from transformers import AutoTokenizer

    from reference_impls._core import merge, replace_module

    record = json.loads((out / outdir.MARKER).read_text(encoding="utf-8"))
    model = load(out)
    merge(model)
    for name, module in list(model.named_modules()):  # a merged wrapper computes base(x): keep the base
        if name and callable(getattr(module, "merge", None)) and hasattr(module, "base"):
            replace_module(model, name, module.base)
    left = hashlib.sha256("\n".join(sorted(model.state_dict())).encode()).hexdigest()[:16]
    if left != record["base_keys_sha256"]:
        raise UsageError(f"--merge: {record['method']} leaves weights outside the base model after merging")
    for p in model.parameters():
        p.requires_grad_(True)
    model.save_pretrained(target, safe_serialization=True)
    AutoTokenizer.from_pretrained(record["model_folder"], local_files_only=True).save_pretrained(target)


# -- odds and ends ------------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _versions() -> dict[str, str]:
    import torch
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import accelerate

        out["accelerate"] = accelerate.__version__
    except ImportError:
        pass
    return out


class _Progress:
    """A rich progress bar on stderr: step, loss, tokens/s, memory, time left. Silent off the main process."""

    def __init__(self, enabled: bool, title: str, total: int, done: int, device) -> None:
        self.enabled = enabled
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  {task.fields[tps]} tok/s  {task.fields[mem]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True))
        self.memory_kind = "GPU peak" if device.type == "cuda" else "RSS"
        self.task = self.progress.add_task(title, total=total, completed=done, loss="-", tps="-", mem="-")

    def __enter__(self) -> "_Progress":
        if self.enabled:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.progress.__exit__(*exc)

    def update(self, loss: float, tokens_per_s: float, memory_mb: float) -> None:
        if self.enabled:
            self.progress.update(self.task, advance=1, loss=f"{loss:.4f}", tps=f"{tokens_per_s:,.0f}",
                                 mem=f"{self.memory_kind} {memory_mb:,.0f} MB")
