"""`peftkb evidence [METHOD]`: measured runs of a method, ours and published ones, each with its setting."""
from __future__ import annotations

from typing import Optional

import typer

from peftkb import query
from peftkb.cli.common import FORMAT_OPTION, catalog, complete_method_id
from peftkb.cli.output import Format, emit, text
from peftkb.errors import NotFoundError, UsageError

COLUMNS = ["method", "source", "label", "accuracy", "trainable_params", "peak_memory_gib", "model", "task"]


def _gib(value: int | None) -> float | None:
    return None if value is None else round(value / 2**30, 2)


def evidence(
    method_id: Optional[str] = typer.Argument(None, metavar="[METHOD]", help="Method id, name or alias (default: all).",
                                              autocompletion=complete_method_id),
    source: Optional[str] = typer.Option(None, "--source", "-S", help="Only this source (e.g. peft-metamathqa)."),
    unmapped: bool = typer.Option(False, "--unmapped", help="List the published runs that map to no catalog method."),
    check: bool = typer.Option(False, "--check-calculators",
                               help="Compare `peftkb params` and `peftkb memory` with every published run."),
    fmt: Format = FORMAT_OPTION,
) -> None:
    """Show every measurement of a method: our assessment's and published ones, with their settings and sources."""
    from peftkb.cache import find_root
    from peftkb import evidence as ev

    cat = catalog()
    root = find_root()
    sources = ev.load_evidence(root, cat)
    known = [s.id for s in sources] + sorted({m.source for m in ev.assessment_measurements(root)})
    if source is not None and source not in known:
        from peftkb.errors import did_you_mean

        raise NotFoundError(f"unknown evidence source '{source}'" + did_you_mean(source, known)
                            + f"; sources: {', '.join(known)}")
    if unmapped or check:
        if method_id is not None:
            raise UsageError("--unmapped and --check-calculators apply to whole sources, not to one METHOD")
        chosen = [s for s in sources if source is None or s.id == source]
        if unmapped:
            rows = [{"source": s.id, "experiment": r.experiment, "reason": r.mapping, "file": r.file}
                    for s in chosen for r in s.unmapped()]
            emit(rows, fmt, columns=["source", "experiment", "reason", "file"], title="Runs mapped to no catalog method")
            return
        checks = [c for s in chosen for c in ev.check_calculators(s, cat)]
        rows = [c.to_dict() for c in checks]
        if fmt in (Format.json, Format.yaml):
            emit(rows, fmt, data={"runs": rows, "summary": ev.summarize_checks(checks)})
            return
        emit(rows, fmt, columns=["experiment", "measured_params", "counted_params", "params_exact",
                                 "measured_memory", "estimated_memory", "memory_error"],
             title="Calculators against published runs")
        if fmt is Format.table:
            overall = ev.summarize_checks(checks)["overall"]
            text(f"counts exact: {overall['params_exact']} of {overall['runs']}; memory error (abs): median "
                 f"{overall['memory_median_abs_error']:.1%}, worst {overall['memory_worst_abs_error']:.1%}")
        return
    method = query.find_method(cat, method_id).id if method_id is not None else None
    found = [m for m in ev.measurements(root, cat, method) if source is None or m.source == source]
    if not found and method is not None:
        raise NotFoundError(f"no measurement of '{method}' in {', '.join(known) or 'any source'}")
    rows = [{**m.to_dict(), "peak_memory_gib": _gib(m.peak_memory_bytes),  # the table rounds; JSON keeps all digits
             "accuracy": None if m.accuracy is None else round(m.accuracy, 4)} for m in found]
    emit(rows, fmt, columns=COLUMNS, title=f"Measurements of {method}" if method else "Measurements",
         data=[m.to_dict() for m in found])


def register(app: typer.Typer) -> None:
    app.command("evidence")(evidence)
