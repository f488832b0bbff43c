"""`peftkb validate` (the CI entry point for data) and `peftkb schema`."""
from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from peftkb.cli.output import text
from peftkb.cache import CATALOG_DIR, find_root
from peftkb.errors import EXIT_BAD_INPUT, CatalogError, UsageError


class ValidateFormat(str, Enum):
    text = "text"
    json = "json"


def validate(
    paths: list[Path] = typer.Argument(None, metavar="[PATH]...",
                                       help="A knowledge-base folder, or catalog files (default: this checkout)."),
    fmt: ValidateFormat = typer.Option(ValidateFormat.text, "--format", "-f", help="Output format.", case_sensitive=False),
) -> None:
    """Check the taxonomy and every catalog file; exit 0 when valid, 2 with every problem otherwise."""
    try:
        catalog = _load(paths or [])
    except CatalogError as exc:
        if fmt is ValidateFormat.json:
            text(json.dumps({"valid": False, "problems": [p.to_dict() for p in exc.problems]}, indent=2))
        else:
            for problem in exc.problems:
                sys.stderr.write(f"{problem}\n")
            sys.stderr.write(f"{len(exc.problems)} problem(s) found\n")
        raise typer.Exit(EXIT_BAD_INPUT)
    if fmt is ValidateFormat.json:
        text(json.dumps({"valid": True, "methods": len(catalog.methods), "categories": len(catalog.categories),
                         "problems": []}, indent=2))
    elif paths and not paths[0].is_dir():
        text(f"valid: {len(paths)} file(s) checked against {len(catalog.methods)} methods")
    else:
        text(f"valid: {len(catalog.methods)} methods in {len(catalog.categories)} categories")


def _load(paths: list[Path]):
    from peftkb.loader import load_catalog, load_catalog_paths

    if not paths:
        return load_catalog(use_cache=False)
    if len(paths) == 1 and paths[0].is_dir():
        return load_catalog(find_root(paths[0] / "x") if not (paths[0] / CATALOG_DIR).is_dir() else paths[0],
                            use_cache=False)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UsageError("no such file: " + ", ".join(missing))
    return load_catalog_paths(find_root(), [p.resolve() for p in paths])


def schema(
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to this file instead of stdout."),
) -> None:
    """Print the JSON Schema of a catalog file (editors validate YAML against it while typing)."""
    from peftkb.model import Method

    document = Method.model_json_schema(by_alias=True)
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    document["title"] = "peftkb catalog entry"
    rendered = json.dumps(document, indent=2, sort_keys=True) + "\n"
    if output:
        output.write_text(rendered, encoding="utf-8")
    else:
        text(rendered)


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
    app.command("schema")(schema)
