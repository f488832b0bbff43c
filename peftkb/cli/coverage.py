"""`peftkb coverage` (what the catalog lacks) and `peftkb crosswalk` (classes under other taxonomies)."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from peftkb.cli.common import FORMAT_OPTION, catalog, complete_method_id
from peftkb.cli.output import Format, emit, text
from peftkb.errors import EXIT_BAD_INPUT, UsageError


class Against(str, Enum):
    survey = "survey"
    peft = "peft"


def coverage(
    against: Against = typer.Option(..., "--against", help="Compare with the survey's method list or installed peft."),
    survey_file: Optional[Path] = typer.Option(None, "--survey-file", exists=True, dir_okay=False,
                                               help="The survey taxonomy file (default: ../shared/survey/taxonomy.yaml)."),
    fmt: Format = FORMAT_OPTION,
) -> None:
    """List what the catalog lacks against the survey or the installed peft; exit 2 if anything."""
    from peftkb import coverage as cov
    from peftkb.cache import find_root

    cat = catalog()
    if against is Against.survey:
        path = survey_file or cov.default_survey_file(find_root())
        if not path.is_file():
            raise UsageError(f"survey file not found: {path} (pass --survey-file)")
        gaps = cov.against_survey(cat, path)
        checked = f"{len(cov.survey_methods(path))} survey methods"
    else:
        try:
            gaps = cov.against_peft(cat)
        except ImportError:
            raise UsageError("peft is not installed (pip install 'peftkb[dev]')") from None
        types, options, _ = cov.peft_inventory()
        checked = f"{len(types)} PeftTypes and {len(options)} LoRA method options"
    if fmt is Format.table and not gaps:
        text(f"complete: the catalog covers all {checked}")
        return
    emit([g.to_dict() for g in gaps], fmt, columns=["kind", "subject", "detail"], title=f"coverage against {against.value}")
    if gaps:
        raise typer.Exit(EXIT_BAD_INPUT)


def crosswalk(
    method_id: str = typer.Argument(..., metavar="ID", help="Method id, name or alias.", autocompletion=complete_method_id),
    fmt: Format = FORMAT_OPTION,
) -> None:
    """Show a method's class under Xu et al. and under the other taxonomies (Han, Lialin, Ding, peft docs)."""
    from peftkb import query
    from peftkb.model import CROSSWALK_SCHEMES

    cat = catalog()
    m = query.find_method(cat, method_id)
    rows = [{"scheme": "xu2023", "taxonomy": "Xu et al. 2023, arXiv 2312.12148 (this catalog)",
             "class": m.category, "source": "stated" if m.survey.leaf else "derived",
             "where": f"placement confidence: {m.survey.confidence}" if m.survey.leaf else "not placed by the survey"}]
    for scheme, (label, _) in CROSSWALK_SCHEMES.items():
        entry = getattr(m.crosswalk, scheme) if m.crosswalk else None
        rows.append({"scheme": scheme, "taxonomy": label, "class": entry.class_ if entry else None,
                     "source": entry.source if entry else None, "where": entry.where if entry else None})
    emit(rows, fmt, columns=["scheme", "taxonomy", "class", "source", "where"], title=f"{m.name}: crosswalk")


def register(app: typer.Typer) -> None:
    app.command("coverage")(coverage)
    app.command("crosswalk")(crosswalk)
