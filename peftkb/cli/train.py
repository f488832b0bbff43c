"""`peftkb train METHOD --model PATH --data FILE`: train a reference implementation on your model and data.

Runs in this process, or, with `--launcher accelerate --num-processes N`, as N processes under
`accelerate launch -m peftkb.train` (DDP, or FSDP2 with `--distributed fsdp`). torch is imported only
when the command runs, so `import peftkb.cli` stays light.
"""
from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer

from peftkb import query
from peftkb.cli.common import FORMAT_OPTION, complete_method_id, index
from peftkb.cli.output import Format, emit
from peftkb.errors import UsageError


class Task(str, Enum):
    causal_lm = "causal-lm"
    classification = "classification"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Launcher(str, Enum):
    none = "none"
    accelerate = "accelerate"


class Distributed(str, Enum):
    ddp = "ddp"
    fsdp = "fsdp"


def train(
    method: str = typer.Argument(..., metavar="METHOD", help="Method id, name or alias (one with a reference implementation).",
                                 autocompletion=complete_method_id),
    model: str = typer.Option(..., "--model", "-m", help="A local Hugging Face model folder, or smollm2 / minilm (bundled)."),
    data: Path = typer.Option(..., "--data", "-d", help="Training rows: .jsonl or .csv with text | text,label | prompt,completion."),
    out: Path = typer.Option(Path("peftkb-out"), "--out", "-o", help="Output folder (adapter, config, metrics, checkpoint)."),
    task: Optional[Task] = typer.Option(None, "--task", help="causal-lm or classification (default: from the data)."),
    settings: list[str] = typer.Option([], "--set", "-s", metavar="FIELD=VALUE",
                                       help="Override a field of the method's config, e.g. -s r=16 (repeatable)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Optimizer steps (overrides --epochs)."),
    epochs: int = typer.Option(1, "--epochs", min=1, help="Passes over the training rows."),
    lr: float = typer.Option(2e-4, "--lr", min=0.0, help="AdamW learning rate."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Rows per micro-batch, per process."),
    grad_accum: int = typer.Option(1, "--grad-accum", min=1, help="Micro-batches per optimizer step."),
    warmup_steps: int = typer.Option(0, "--warmup-steps", min=0, help="Linear learning-rate warm-up."),
    seq_len: int = typer.Option(256, "--seq-len", min=2, help="Tokens per row; longer rows are truncated."),
    eval_share: float = typer.Option(0.1, "--eval-share", min=0.0, max=0.9, help="Share of rows held out."),
    eval_every: int = typer.Option(50, "--eval-every", min=1, help="Evaluate every N steps (and at the end)."),
    save_every: int = typer.Option(50, "--save-every", min=1, help="Checkpoint every N steps (and at the end)."),
    bf16: bool = typer.Option(False, "--bf16", help="bfloat16 autocast (weights and optimizer stay fp32)."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing", help="Recompute activations in backward."),
    seed: int = typer.Option(0, "--seed", help="Seed for the split, the order, the init and dropout."),
    merge: bool = typer.Option(False, "--merge", help="Also write merged/: the base model with the update folded in."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoint.pt, bit for bit."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a previous run's files in OUT."),
    device: Device = typer.Option(Device.auto, "--device", help="auto (cuda when present), cpu or cuda."),
    launcher: Launcher = typer.Option(Launcher.none, "--launcher", help="accelerate: run --num-processes processes."),
    num_processes: int = typer.Option(1, "--num-processes", min=1, help="Processes for --launcher accelerate."),
    distributed: Distributed = typer.Option(Distributed.ddp, "--distributed", help="ddp or fsdp (FSDP2) with several processes."),
    fmt: Format = FORMAT_OPTION,
) -> None:
    """Train a method's reference implementation on a model and a data file; write the adapter and metrics."""
    import reference_impls

    m = query.find_method(index(), method)  # NotFoundError, with suggestions, for an unknown method
    if m.id not in reference_impls.IDS:
        raise UsageError(f"'{m.id}' has no reference implementation; methods with one: "
                         + ", ".join(sorted(reference_impls.IDS)))
    for name, value in (("--lr", lr), ("--eval-share", eval_share)):
        if not math.isfinite(value):
            raise UsageError(f"{name} {value}: must be a finite number")
    if lr == 0:
        raise UsageError("--lr 0: nothing would change; give a learning rate > 0")
    if merge and not (m.get("properties") or {}).get("mergeable"):
        raise UsageError(f"--merge: the catalog does not list {m.id} as mergeable")
    if launcher is Launcher.accelerate:
        args = _forwarded(locals(), m.id)
        raise typer.Exit(_launch(args, num_processes, device))

    from peftkb.cli.run import parse_config
    from peftkb.train.data import read, task_for, split
    from peftkb.train.loop import Options, train as run_training

    # check the data before anything heavy loads: a bad row is reported in a second
    dataset = read(data)
    task_for(dataset, task.value if task else None)
    split(dataset.rows, eval_share, seed)
    opts = Options(method=m.id, model=model, data=data, out=out, task=task.value if task else None,
                   settings=list(settings), max_steps=max_steps, epochs=epochs, lr=lr, batch_size=batch_size,
                   grad_accum=grad_accum, warmup_steps=warmup_steps, seq_len=seq_len, eval_share=eval_share,
                   eval_every=eval_every, save_every=save_every, bf16=bf16,
                   gradient_checkpointing=gradient_checkpointing, seed=seed, merge=merge, resume=resume,
                   overwrite=overwrite, device=device.value, distributed=distributed.value)
    config_cls, _ = reference_impls.METHODS[m.id]
    # -s values are parsed and range-checked against the loaded model, before anything is written
    result = run_training(opts, lambda total_steps, base: parse_config(m, config_cls, settings, total_steps, base))
    if int(os.environ.get("RANK", "0")) != 0:
        return
    summary = result["summary"]
    record = {"out": result["out"], "method": m.id, "model": model, "task": result["task"],
              "trainable_params": result["trainable_params"], "total_params": result["total_params"],
              "processes": result["world_size"], "steps": summary["steps"], "loss_first": summary["loss_first"],
              "loss_last": summary["loss_last"],
              **{k: v for k, v in (summary["eval"] or {}).items() if k != "step"},
              "merged": summary.get("merged")}
    rows = [{"field": k, "value": v} for k, v in record.items()]
    emit(rows, fmt, columns=["field", "value"], title=f"peftkb train {m.id}", data=record)


# -- many processes ----------------------------------------------------------------------------------------
_NOT_FORWARDED = {"launcher", "num_processes", "method"}


def _forwarded(params: dict[str, Any], method_id: str) -> list[str]:
    """The options of this call as command-line arguments for each launched process."""
    args = [method_id]
    for name, value in params.items():
        if name in _NOT_FORWARDED or name.startswith("_") or name == "m" or value is None:
            continue
        flag = "--format" if name == "fmt" else "--" + name.replace("_", "-")
        if name == "settings":
            for item in value:
                args += ["--set", item]
        elif isinstance(value, bool):
            if value:
                args.append(flag)
        elif isinstance(value, Enum):
            args += [flag, value.value]
        elif name in ("method", "model", "data", "out", "task", "max_steps", "epochs", "lr", "batch_size",
                      "grad_accum", "warmup_steps", "seq_len", "eval_share", "eval_every", "save_every", "seed"):
            args += [flag, str(value)]
    return args


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list[str], num_processes: int, device: Device) -> int:
    """`accelerate launch` N processes of `python -m peftkb.train ARGS`; returns their exit code."""
    if num_processes == 1:
        cmd = [sys.executable, "-m", "peftkb.train", *args]
    else:
        # --multi_gpu selects accelerate's torchrun launcher; on a machine without GPUs each process
        # finds no CUDA device and accelerate builds a gloo (CPU) process group instead
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
               str(num_processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), "-m", "peftkb.train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run(cmd, env=env).returncode


def register(app: typer.Typer) -> None:
    app.command("train")(train)
