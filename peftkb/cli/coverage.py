"""`peftkb coverage` (what the catalog lacks) and `peftkb crosswalk` (classes under other taxonomies)."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from peftkb.cli.common import FORMAT_OPTION, catalog, complete_method_id, index
from peftkb.cli.output import Format, emit, text
from peftkb.errors import EXIT_BAD_INPUT, UsageError


class Against(str, Enum):
    survey = "survey"
    peft = "peft"


def coverage(
    against: Against = typer.Option(..., "--against", help="Compare with the survey's method list or installed peft."),
    survey_file: Optional[Path] = typer.Option(None, "--survey-file", exists=True, dir_okay=False,
                                               help="The survey taxonomy file (default: taxonomy/survey-xu2023.yaml)."),
    fmt: Format = FORMAT_OPTION,
) -> None:
    """List what the catalog lacks against the survey or the installed peft; exit 2 if anything."""
    from peftkb import coverage as cov
    from peftkb.cache import find_root

    cat = catalog()
    if against is Against.survey:
        path = survey_file or cov.default_survey_file(find_root())
        if not path.exists():
            raise UsageError(f"survey file not found: {path} (pass --survey-file)")
        if not path.is_file():
            raise UsageError(f"{path}: not a regular file")
        check_survey_file(path)
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


def check_survey_file(path: Path) -> None:
    """Refuse a survey file that is not the survey's taxonomy, with one line naming file, line and field.

    The file is read by the same safe loader as the catalog (size cap, UTF-8, no control characters, no
    aliases, bounded nesting), then its shape is checked: a mapping whose `taxonomy` is a list of
    categories, each with a string `id` and optional `methods` (each with a string `name`, optional
    `aka` strings) and `subcategories`. What passes can be walked without a KeyError.
    """
    from peftkb.yamlsafe import YamlProblem, dotted, load_located

    def bad(where: tuple, message: str) -> UsageError:
        line, column = doc.where(where)
        field = dotted(where)
        return UsageError(f"{path}:{line}:{column}: " + (f"{field}: " if field else "") + message)

    try:
        doc = load_located(path)
    except YamlProblem as exc:
        raise UsageError(f"{path}:{exc.line}:{exc.column}: " + (f"{exc.field}: " if exc.field else "")
                         + exc.message) from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not isinstance(doc.data, dict) or not isinstance(doc.data.get("taxonomy"), list):
        raise bad((), "not a survey taxonomy file: expected a mapping with a list `taxonomy`")

    def walk(nodes: list, where: tuple) -> None:
        for i, node in enumerate(nodes):
            at = where + (i,)
            if not isinstance(node, dict) or not isinstance(node.get("id"), str):
                raise bad(at, "each category must be a mapping with a string `id`")
            methods = node.get("methods") or []
            if not isinstance(methods, list):
                raise bad(at + ("methods",), "must be a list")
            for j, method in enumerate(methods):
                if not isinstance(method, dict) or not isinstance(method.get("name"), str):
                    raise bad(at + ("methods", j), "each method must be a mapping with a string `name`")
                aka = method.get("aka") or []
                if not isinstance(aka, list) or not all(isinstance(a, str) for a in aka):
                    raise bad(at + ("methods", j, "aka"), "must be a list of names")
            subcategories = node.get("subcategories") or []
            if not isinstance(subcategories, list):
                raise bad(at + ("subcategories",), "must be a list")
            walk(subcategories, at + ("subcategories",))

    walk(doc.data["taxonomy"], ("taxonomy",))


def crosswalk(
    method_id: str = typer.Argument(..., metavar="ID", help="Method id, name or alias.", autocompletion=complete_method_id),
    fmt: Format = FORMAT_OPTION,
) -> None:
    """Show a method's class under Xu et al. and under the other taxonomies (Han, Lialin, Ding, peft docs)."""
    from peftkb import query

    cat = index()
    m = query.find_method(cat, method_id)
    rows = [{"scheme": "xu2023", "taxonomy": "Xu et al. 2023, arXiv 2312.12148 (this catalog)",
             "class": m.category, "source": "stated" if m.survey.leaf else "derived",
             "where": f"placement confidence: {m.survey.confidence}" if m.survey.leaf else "not placed by the survey"}]
    for scheme, label in query.CROSSWALK_LABELS.items():
        entry = m.crosswalk.get(scheme) if m.crosswalk else None
        rows.append({"scheme": scheme, "taxonomy": label, "class": entry["class"] if entry else None,
                     "source": entry.source if entry else None, "where": entry.where if entry else None})
    emit(rows, fmt, columns=["scheme", "taxonomy", "class", "source", "where"], title=f"{m.name}: crosswalk")


def register(app: typer.Typer) -> None:
    app.command("coverage")(coverage)
    app.command("crosswalk")(crosswalk)
