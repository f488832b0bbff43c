"""`peftkb validate` (the CI entry point for data) and `peftkb schema`."""
from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from peftkb.cli.output import text
from peftkb.cache import CATALOG_DIR, TAXONOMY_FILE, find_root
from peftkb.errors import EXIT_BAD_INPUT, CatalogError, UsageError


class ValidateFormat(str, Enum):
    text = "text"
    json = "json"


def validate(
    raw_paths: list[str] = typer.Argument(None, metavar="[PATH]...",
                                          help="A knowledge-base folder (the root, holding taxonomy/ and catalog/), "
                                               "or catalog files (default: the knowledge base you are in)."),
    fmt: ValidateFormat = typer.Option(ValidateFormat.text, "--format", "-f", help="Output format.", case_sensitive=False),
) -> None:
    """Check the taxonomy, every catalog file and the evidence files; exit 0 when valid, 2 with every problem otherwise."""
    paths = _paths(raw_paths or [])
    try:
        catalog = _load(paths)
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
        where = f" ({paths[0].resolve()})" if paths else ""
        text(f"valid: {len(catalog.methods)} methods in {len(catalog.categories)} categories{where}")


def _paths(raw: list[str]) -> list[Path]:
    """The PATH arguments, checked: never an empty string, a folder only alone, every path existing.

    A folder is validated as the knowledge-base root it names, never the current folder or $PEFTKB_ROOT
    in its stead.
    """
    if any(not r.strip() for r in raw):
        raise UsageError("an empty path was given; name a knowledge-base folder or catalog files")
    paths = [Path(r) for r in raw]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise UsageError("no such file or folder: " + ", ".join(missing))
    folders = [p for p in paths if p.is_dir()]
    if folders and len(paths) > 1:
        raise UsageError("give one knowledge-base folder, or catalog files, not both")
    if folders:
        folder = folders[0]
        lacking = [str(part) for part in (TAXONOMY_FILE, CATALOG_DIR) if not (folder / part).exists()]
        if lacking:
            raise UsageError(f"{folder} is not a knowledge base: it has no " + " and no ".join(lacking)
                             + " (give the folder that holds both)")
        if not any((folder / CATALOG_DIR).glob("*.yaml")):
            raise UsageError(f"{folder / CATALOG_DIR} holds no catalog files (*.yaml)")
    else:
        not_files = [str(p) for p in paths if not p.is_file()]
        if not_files:
            raise UsageError("not a regular file: " + ", ".join(not_files))
    return paths


def _load(paths: list[Path]):
    from peftkb.loader import load_catalog, load_catalog_paths

    from peftkb.evidence import load_evidence

    if not paths or paths[0].is_dir():  # a whole knowledge base: its catalog, then its measured evidence
        root = paths[0].resolve() if paths else find_root()
        catalog = load_catalog(root, use_cache=False)
        load_evidence(root, catalog)
        return catalog
    # files: checked in the context of the knowledge base they belong to (found from the first one)
    return load_catalog_paths(_root_of(paths[0].resolve()), [p.resolve() for p in paths])


def _root_of(file: Path) -> Path:
    """The knowledge base a catalog file lives in (the nearest folder above it with taxonomy and catalog)."""
    for folder in file.parents:
        if (folder / TAXONOMY_FILE).is_file() and (folder / CATALOG_DIR).is_dir():
            return folder
    return find_root()  # a file outside any knowledge base: checked against the one in use


def schema(
    output: Optional[str] = typer.Option(None, "--output", "-o", metavar="FILE",
                                         help="Write to this file instead of stdout."),
) -> None:
    """Print the JSON Schema of a catalog file (editors validate YAML against it while typing)."""
    from peftkb.model import Method

    if output is not None:
        if not output.strip():
            raise UsageError("--output is an empty path; name the file to write")
        if Path(output).is_dir():
            raise UsageError(f"--output {output} is a folder; name the file to write")
        if not Path(output).resolve().parent.is_dir():
            raise UsageError(f"--output {output}: the folder {Path(output).resolve().parent} does not exist")

    document = Method.model_json_schema(by_alias=True)
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    document["title"] = "peftkb catalog entry"
    rendered = json.dumps(document, indent=2, sort_keys=True) + "\n"
    if output is not None:
        target = Path(output)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(rendered, encoding="utf-8")
        tmp.replace(target)  # never half a file in place of the old one
    else:
        text(rendered)


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
    app.command("schema")(schema)
