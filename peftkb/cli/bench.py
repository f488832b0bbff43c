"""`peftkb bench`: fine-tune the survey's methods on real models and data; `peftkb bench report DIR`."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from peftkb.cli.output import Format, emit, text
from peftkb.errors import UsageError, did_you_mean

bench_app = typer.Typer(help="Reproduce the survey's assessment with the reference implementations.",
                        no_args_is_help=False, invoke_without_command=True)


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


def _split(value: Optional[str]) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@bench_app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    methods: Optional[str] = typer.Option(None, "--methods", help="Comma-separated catalog ids (default: the profile's)."),
    models: Optional[str] = typer.Option(None, "--models", help="Comma-separated: minilm, smollm2, tiny-bert, tiny-llama."),
    task: str = typer.Option("bbc-news", "--task", help="The task (bbc-news: 5-way topic classification)."),
    profile: str = typer.Option("cpu", "--profile", help="smoke (CI), cpu (MiniLM, ~90 min on 2 cores), cpu-long (SmolLM2) or full (GPU)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Override the profile's epochs."),
    seeds: Optional[int] = typer.Option(None, "--seeds", min=1, help="Override the profile's number of seeds."),
    device: Device = typer.Option(Device.cpu, "--device", help="cpu or cuda."),
    out: Path = typer.Option(Path("bench-results"), "--out", help="Folder for results.jsonl (resumed if present)."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, max=64,
                             help="Runs at a time, each in its own process (on a GPU they share the device)."),
) -> None:
    """Fine-tune each method on each model and record parameters, accuracy, memory and time per run."""
    if ctx.invoked_subcommand is not None:
        return
    from peftkb.bench import runner
    from peftkb.bench.models import MODELS

    if profile not in runner.PROFILES:
        raise UsageError(f"unknown profile '{profile}'" + did_you_mean(profile, runner.PROFILES))
    if task != "bbc-news":
        raise UsageError(f"unknown task '{task}'; only bbc-news is available")
    chosen_models = _split(models)
    for m in chosen_models or []:
        if m not in MODELS:
            raise UsageError(f"unknown model '{m}'" + did_you_mean(m, MODELS) + f"; use {', '.join(MODELS)}")
    chosen_methods = _split(methods)
    if chosen_methods:
        _check_methods(chosen_methods)
    if device is Device.cuda:
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda, but torch sees no CUDA device")
    started = datetime.now(timezone.utc)
    specs, records = runner.run_profile(runner.PROFILES[profile], out, methods=chosen_methods, models=chosen_models,
                                        seeds=seeds, epochs=epochs, device=device.value, jobs=jobs)
    asked = {"--profile": profile, "--methods": methods, "--models": models, "--epochs": epochs, "--seeds": seeds,
             "--device": device.value if device is not Device.cpu else None, "--jobs": jobs if jobs > 1 else None,
             "--out": out}
    command = " ".join(["peftkb bench", *(f"{k} {v}" for k, v in asked.items() if v is not None)])
    runner.log_invocation(out, command, started, [s.key for s in specs])
    done = [records[s.key] for s in specs]
    failed = [r for r in done if r["status"] != "ok"]
    text(f"{len(done) - len(failed)} of {len(done)} runs ok; results in {out / 'results.jsonl'}")
    for r in failed:
        text(f"  failed: {r['key']}: {r.get('error')}")


def _check_methods(ids: list[str]) -> None:
    import reference_impls

    from peftkb.cli.common import index

    known = {m.id for m in index().methods}
    for mid in ids:
        if mid not in known:
            from peftkb.errors import NotFoundError

            raise NotFoundError(f"no method '{mid}'" + did_you_mean(mid, known))
        if mid not in reference_impls.METHODS:
            raise UsageError(f"'{mid}' has no reference implementation; benchmarkable: "
                             + ", ".join(sorted(reference_impls.METHODS)))


@bench_app.command("report")
def report(
    results: Path = typer.Argument(..., exists=True, file_okay=False, help="A folder holding results.jsonl."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write report.md and the SVG plots (default: RESULTS)."),
    fmt: Format = typer.Option(Format.table, "--format", "-f", help="Output format of the table.", case_sensitive=False),
) -> None:
    """Print the survey-style table (methods x models) and write plots for the site."""
    from peftkb.bench import report as rep
    from peftkb.bench.runner import read_results

    records = list(read_results(results / "results.jsonl").values())
    if not records:
        raise UsageError(f"no results in {results / 'results.jsonl'}")
    cells = rep.summarise(records)
    rows = rep.table_rows(cells)
    target = out or results
    target.mkdir(parents=True, exist_ok=True)
    models = sorted({c.model for c in cells})
    for model in models:
        (target / f"accuracy_vs_params_{model}.svg").write_text(rep.accuracy_vs_params_svg(cells, model), encoding="utf-8")
        (target / f"memory_{model}.svg").write_text(rep.memory_svg(cells, model), encoding="utf-8")
    ok = [r for r in records if r.get("status") == "ok"]
    meta = {"generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "runs": len(records), "ok": len(ok), "machines": sorted({r.get("machine", "?") for r in records}),
            "profiles": sorted({r.get("profile", "?") for r in records}), "versions": ok[0]["versions"] if ok else {}}
    (target / "report.md").write_text(
        f"<!-- generated by `peftkb bench report` -->\n{rep.markdown_table(rows)}\n", encoding="utf-8")
    (target / "summary.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, sort_keys=True), encoding="utf-8")
    extra = [c for c in ("lr", "steps", "converged") if any(r.get(c) is not None for r in rows)]
    emit(rows, fmt, columns=["method", "model", "trainable", "trainable_pct", "accuracy", "peak_memory_mb",
                             "s_per_step", "runs", *extra], title=f"bench: {len(ok)}/{len(records)} runs ok", data=rows)


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
