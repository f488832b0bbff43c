"""Calculator commands: params, memory, fit. No torch: models are read from config.json files or presets."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from peftkb.calculators.architecture import Architecture, load_model, preset_names
from peftkb.calculators.memory import (DEFAULT_PRECISION, DEVICES, DTYPE_BYTES, MAX_BATCH, MAX_SEQ, GiB, OPTIMIZERS,
                                       MemoryEstimate, estimate_memory, parse_size, resolve_precision)
from peftkb.calculators.params import ParamCount, count_trainable, has_formula, parse_assignments
from peftkb.cli.common import FORMAT_OPTION, complete_method_id, index
from peftkb.cli.output import Format, emit
from peftkb.errors import NotFoundError, PeftkbError, UsageError, did_you_mean

MODEL_HELP = "Preset name (e.g. llama-2-7b), a config.json, or a folder holding config.json."
SET_HELP = "Hyperparameter as NAME=VALUE, e.g. r=16 (repeatable)."
PRECISION_HELP = ("pure-bf16: the model in bf16 without AMP, as peft's method-comparison suite (adapters fp32); "
                  "mixed: fp32 master weights and AdamW states, bf16 compute (HF Trainer bf16=True); pure-fp16 "
                  f"with --dtype fp16. Default: pure in --dtype ({DEFAULT_PRECISION}).")
TARGETS_HELP = "Comma-separated target modules: family names (q_proj,v_proj), suffixes (output.dense) or roles (q,v)."


def _complete_model(incomplete: str) -> list[str]:
    return [n for n in preset_names() if n.startswith(incomplete.lower())]


def _find(key: str) -> Any:
    """A method record by id, name or alias (any case); NotFoundError with suggestions."""
    methods = index().methods
    folded = key.casefold()
    for m in methods:
        if any(n.casefold() == folded for n in [m.id, m.name, *(m.aliases or [])]):
            return m
    raise NotFoundError(f"no method '{key}'" + did_you_mean(key, [m.id for m in methods]))


def _split(text: Optional[str]) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _count(method: Any, arch: Architecture, sets: list[str], targets: Optional[str], strict: bool = True) -> ParamCount:
    overrides = parse_assignments(method, sets, strict=strict)
    return count_trainable(method, arch, overrides, targets=_split(targets) or None)


def _check_compare(methods: list[Any], sets: list[str], targets: Optional[str]) -> list[str]:
    """--compare: every --set name must belong to at least one compared method, --targets to one with a
    per-target formula; returns notes saying which methods did not take them."""
    notes = []
    for item in sets:
        name = item.partition("=")[0].strip().replace("-", "_")
        takers = [m.id for m in methods if any(h.name == name for h in m.hyperparameters or [])]
        if not takers:
            known = sorted({h.name for m in methods for h in m.hyperparameters or []})
            raise UsageError(f"--set {item}: none of the compared methods has a hyperparameter '{name}'"
                             + did_you_mean(name, known) + "; theirs: " + (", ".join(known) or "none"))
        if len(takers) < len(methods):
            notes.append(f"{name} applies to {', '.join(takers)} only")
    if targets:
        takers = [m.id for m in methods if m.trainable_params and m.trainable_params.per_target]
        if not takers:
            raise UsageError("--targets: none of the compared methods has a per-target formula")
        if len(takers) < len(methods):
            notes.append(f"--targets applies to {', '.join(takers)} only (the others have no per-target formula)")
    return notes


PEFT_CONFIG_HELP = "A peft adapter_config.json (or its folder): count or estimate that setup (replaces METHOD, -s, -t)."


def _from_peft_config(path: Path, method_id: Optional[str], sets: list[str], targets: Optional[str]
                      ) -> tuple[Any, dict[str, Any], Optional[list[str] | str], str]:
    """(method, overrides, targets, note) read from a user's peft config."""
    from peftkb.interop.peft_import import method_of, read_peft_config, settings_of

    if method_id or sets or targets:
        raise UsageError("--peft-config gives the method and its settings: leave out METHOD, --set and --targets")
    config = read_peft_config(path)
    found, reason = method_of(config, index())
    if found is None:
        raise UsageError(f"{path}: {reason}")
    method = _find(found)
    overrides = settings_of(method, config)
    chosen = overrides.pop("target_modules", None)
    per_target = bool(method.trainable_params and method.trainable_params.per_target)
    return method, overrides, (chosen if per_target else None), f"from {path}: {found} ({reason})"


def _count_title(c: ParamCount) -> str:
    approx = "" if c.exact else " (approximate)"
    return (f"{c.method} on {c.model}: {c.trainable:,} trainable parameters{approx}, "
            f"{c.percent:.4f}% of {c.n_params:,}")


def params(
    method_id: Optional[str] = typer.Argument(None, metavar="METHOD", help="Method id, name or alias.",
                                              autocompletion=complete_method_id),
    model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP, autocompletion=_complete_model),
    sets: list[str] = typer.Option([], "--set", "-s", help=SET_HELP),
    targets: Optional[str] = typer.Option(None, "--targets", "-t", help=TARGETS_HELP),
    compare: Optional[str] = typer.Option(None, "--compare", "-c", help="Comma-separated method ids to compare in one table."),
    peft_config: Optional[Path] = typer.Option(None, "--peft-config", help=PEFT_CONFIG_HELP),
    fmt: Format = FORMAT_OPTION,
) -> None:
    """Count the trainable parameters of a method on a model, exactly, from the catalog formula."""
    arch = load_model(model)
    if peft_config is not None:
        if compare:
            raise UsageError("--peft-config counts one setup: leave out --compare")
        method, overrides, chosen, note = _from_peft_config(peft_config, method_id, sets, targets)
        c = count_trainable(method, arch, overrides, targets=chosen)
        c.notes.insert(0, note)
        _emit_count(c, arch, fmt)
        return
    ids = ([method_id] if method_id else []) + _split(compare)
    if not ids:
        raise UsageError("give a METHOD or --compare METHOD,METHOD,...")
    if compare:
        methods = [_find(i) for i in ids]
        notes = _check_compare(methods, sets, targets)
        for m in methods:
            if not has_formula(m):
                raise UsageError(f"method '{m.id}' has no trainable-parameter formula in the catalog")
        counts = [_count(m, arch, sets, targets if m.trainable_params.per_target else None, strict=False)
                  for m in methods]
        rows = [{"method": c.method, "trainable": c.trainable, "percent": round(c.percent, 4),
                 "exact": c.exact, "formula": "; ".join(f"{k}: {v}" for k, v in c.formulas.items())} for c in counts]
        emit(rows, fmt, columns=["method", "trainable", "percent", "exact", "formula"],
             title=f"trainable parameters on {arch.name} ({arch.n_params:,} parameters)"
             + "".join(f"\n  note: {n}" for n in notes),
             data={"model": arch.summary(), "methods": [c.to_dict() for c in counts], "notes": notes})
        return
    _emit_count(_count(_find(ids[0]), arch, sets, targets), arch, fmt)


def _emit_count(c: ParamCount, arch: Architecture, fmt: Format) -> None:
    rows = [{"scope": r.scope, "module": r.module, "role": r.role, "count": r.count, "d_in": r.d_in,
             "d_out": r.d_out, "each": r.each, "params": r.params} for r in c.rows]
    rows.append({"scope": "", "module": "total", "role": None, "count": None, "d_in": None, "d_out": None,
                 "each": None, "params": c.trainable})
    emit(rows, fmt, columns=["scope", "module", "role", "count", "d_in", "d_out", "each", "params"],
         title=_count_title(c) + "".join(f"\n  note: {n}" for n in c.notes),
         data={**c.to_dict(), "model": arch.summary()})


def _estimate(method: Any, arch: Architecture, sets: list[str], targets: Optional[str], strict: bool = True,
              **kw: Any) -> tuple[ParamCount, MemoryEstimate]:
    """`method` is a catalog record, or (record, overrides, targets, note) read from a peft config."""
    if isinstance(method, tuple):
        method, overrides, chosen, note = method
        count = count_trainable(method, arch, overrides, targets=chosen)
        count.notes.insert(0, note)
    else:
        overrides = parse_assignments(method, sets, strict=strict)
        count = count_trainable(method, arch, overrides, targets=_split(targets) or None)
    return count, estimate_memory(method, arch, count, overrides=overrides, **kw)


def _gib(n: int) -> float:
    return round(n / GiB, 3)


def _precision_label(precision: str, given: Optional[str], adapter_dtype: str = "fp32") -> str:
    if precision == "fp32":
        return "(fp32 throughout)"
    adapters = ", adapters in the model dtype" if adapter_dtype == "model" else ""
    return f"(precision {precision}" + (", the default" if given is None else "") + adapters + ")"


ADAPTER_DTYPE_HELP = ("Where peft keeps the weights it adds: fp32 (autocast_adapter_dtype=True, peft's default) or "
                      "model (autocast_adapter_dtype=False: the model's dtype). Pure precision only.")


def memory(
    method_id: Optional[str] = typer.Argument(None, metavar="METHOD", help="Method id, name or alias.",
                                              autocompletion=complete_method_id),
    model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP, autocompletion=_complete_model),
    batch: int = typer.Option(1, "--batch", "-b", min=1, max=MAX_BATCH, help="Sequences per step."),
    seq: int = typer.Option(512, "--seq", min=1, max=MAX_SEQ, help="Tokens per sequence."),
    dtype: str = typer.Option("bf16", "--dtype", help="Weights and activations: " + ", ".join(DTYPE_BYTES) + "."),
    precision: Optional[str] = typer.Option(None, "--precision", help=PRECISION_HELP),
    adapter_dtype: str = typer.Option("fp32", "--adapter-dtype", help=ADAPTER_DTYPE_HELP),
    optimizer: str = typer.Option("adamw", "--optimizer", help="One of " + ", ".join(OPTIMIZERS) + "."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing", help="Recompute each block in backward."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="Quantize the frozen base: nf4."),
    device: str = typer.Option("cuda", "--device", help="cuda (adds the CUDA context) or cpu."),
    attention: str = typer.Option("sdpa", "--attention", help="sdpa (O(S) memory) or eager (O(S^2))."),
    padding_mask: bool = typer.Option(False, "--padding-mask", help="Batches carry an attention mask (padding)."),
    sets: list[str] = typer.Option([], "--set", "-s", help=SET_HELP),
    targets: Optional[str] = typer.Option(None, "--targets", "-t", help=TARGETS_HELP),
    explain: bool = typer.Option(False, "--explain", help="Show the formula of every term."),
    peft_config: Optional[Path] = typer.Option(None, "--peft-config", help=PEFT_CONFIG_HELP),
    fmt: Format = FORMAT_OPTION,
) -> None:
    """Estimate the peak training memory of a method on a model, term by term."""
    arch = load_model(model)
    source = None
    if peft_config is not None:
        source = _from_peft_config(peft_config, method_id, sets, targets)
    elif method_id is None:
        raise UsageError("give a METHOD or --peft-config PATH")
    count, est = _estimate(source or _find(method_id), arch, sets, targets, batch=batch, seq=seq, dtype=dtype.lower(),
                           precision=precision.lower() if precision else None, optimizer=optimizer.lower(),
                           adapter_dtype=adapter_dtype.lower(), gradient_checkpointing=gradient_checkpointing,
                           quantize=quantize.lower() if quantize else None, device=device.lower(),
                           attention=attention.lower(), padding_mask=padding_mask)
    rows = [{"term": t.label, "phase": t.phase, "GiB": _gib(t.bytes), "bytes": t.bytes, "formula": t.formula}
            for t in est.terms]
    rows.append({"term": "allocated peak", "phase": "", "GiB": _gib(est.allocated), "bytes": est.allocated,
                 "formula": "static + max(backward, late, step)"})
    rows.append({"term": "peak", "phase": "", "GiB": _gib(est.peak), "bytes": est.peak,
                 "formula": "allocated peak + overhead"})
    columns = ["term", "phase", "GiB"] + (["formula"] if explain else [])
    title = (f"{est.method} on {est.model}: B={batch} S={seq} {est.dtype} {_precision_label(est.precision, precision, est.adapter_dtype)} {est.optimizer}"
             f"{' +checkpointing' if gradient_checkpointing else ''}{' ' + est.quantize if est.quantize else ''}: "
             f"peak {_gib(est.peak)} GiB ({count.trainable:,} trainable)")
    if explain:
        title += "".join(f"\n  note: {n}" for n in est.notes)
    emit(rows, fmt, columns=columns, title=title, data={**est.to_dict(), "params": count.to_dict()})


def fit(
    model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP, autocompletion=_complete_model),
    memory_budget: str = typer.Option(..., "--memory", help="Device memory with a unit, e.g. 24GB or 80GiB (GB means 2**30 bytes, as GPU memory is quoted)."),
    batch: int = typer.Option(1, "--batch", "-b", min=1, max=MAX_BATCH, help="Sequences per step."),
    seq: int = typer.Option(512, "--seq", min=1, max=MAX_SEQ, help="Tokens per sequence."),
    dtype: str = typer.Option("bf16", "--dtype", help="Weights and activations: " + ", ".join(DTYPE_BYTES) + "."),
    precision: Optional[str] = typer.Option(None, "--precision", help=PRECISION_HELP),
    optimizer: str = typer.Option("adamw", "--optimizer", help="One of " + ", ".join(OPTIMIZERS) + "."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing", help="Recompute each block in backward."),
    device: str = typer.Option("cuda", "--device", help="cuda or cpu."),
    show_all: bool = typer.Option(False, "--all", help="Also list the methods that do not fit."),
    fmt: Format = FORMAT_OPTION,
) -> None:
    """List the catalog methods (those with formulas) that fit a memory budget, smallest estimate first."""
    arch = load_model(model)
    budget = parse_size(memory_budget)
    if dtype.lower() not in DTYPE_BYTES or optimizer.lower() not in OPTIMIZERS or device.lower() not in DEVICES:
        raise UsageError(f"--dtype is one of {', '.join(DTYPE_BYTES)}; --optimizer one of {', '.join(OPTIMIZERS)}; "
                         f"--device one of {', '.join(DEVICES)}")
    shown = resolve_precision(precision.lower() if precision else None, dtype.lower())
    rows, skipped = [], []
    for m in index().methods:
        if not has_formula(m):
            continue
        try:
            count, est = _estimate(m, arch, [], None, batch=batch, seq=seq, dtype=dtype.lower(),
                                   precision=None if shown == "fp32" else shown, optimizer=optimizer.lower(),
                                   gradient_checkpointing=gradient_checkpointing,
                                   device=device.lower())
        except PeftkbError as exc:
            skipped.append({"method": m.id, "reason": str(exc)})
            continue
        fits = est.peak <= budget
        if fits or show_all:
            rows.append({"method": m.id, "name": m.name, "trainable": count.trainable,
                         "percent": round(count.percent, 4), "GiB": _gib(est.peak), "fits": fits,
                         "quantize": est.quantize})
    rows.sort(key=lambda r: (r["GiB"], r["method"]))
    title = (f"methods that fit {_gib(budget)} GiB on {arch.name} (B={batch}, S={seq}, {dtype} "
             f"{_precision_label(shown, precision)}, {optimizer}"
             f"{', checkpointing' if gradient_checkpointing else ''}): {sum(r['fits'] for r in rows)}")
    emit(rows, fmt, columns=["method", "trainable", "percent", "GiB", "fits", "quantize"], title=title,
         data={"model": arch.summary(), "budget_bytes": budget, "precision": shown, "methods": rows,
               "skipped": skipped})


def register(app: typer.Typer) -> None:
    app.command("params")(params)
    app.command("memory")(memory)
    app.command("fit")(fit)
