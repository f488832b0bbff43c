"""`peftkb export METHOD --to peft|adapters`: a catalog entry as a working peft or AdapterHub setup."""
from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from peftkb.cli.output import text, write
from peftkb.errors import UsageError


class Target(str, Enum):
    peft = "peft"
    adapters = "adapters"


class ExportFormat(str, Enum):
    json = "json"
    python = "python"


def export(
    method_id: str = typer.Argument(..., metavar="METHOD", help="Method id, name or alias."),
    to: Target = typer.Option(..., "--to", help="The library to hand the method to."),
    model: str = typer.Option("llama-3.2-3b", "--model", "-m", help="Preset name or a config.json (for module names)."),
    sets: list[str] = typer.Option([], "--set", "-s", metavar="NAME=VALUE", help="Override a hyperparameter."),
    targets: Optional[str] = typer.Option(None, "--targets", "-t", help="Comma-separated roles or module names."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", file_okay=False,
                                          help="Write a folder (adapter_config.json / adapter_config.txt and train.py)."),
    fmt: ExportFormat = typer.Option(ExportFormat.json, "--format", "-f", help="Print the config or a runnable script.",
                                     case_sensitive=False),
    model_path: str = typer.Option("PATH/TO/MODEL", "--model-path", help="The model folder the script loads."),
) -> None:
    """Export a method as a peft adapter_config.json (or AdapterHub config) plus a script that trains one step."""
    from peftkb import query
    from peftkb.calculators.architecture import load_model
    from peftkb.calculators.params import count_trainable, parse_assignments
    from peftkb.cli.common import catalog

    method = query.find_method(catalog(), method_id)
    arch = load_model(model)
    overrides = parse_assignments(method, sets)
    target_list = [t.strip() for t in (targets or "").split(",") if t.strip()] or None
    count = count_trainable(method, arch, overrides, targets=target_list) if method.trainable_params else None
    if to is Target.adapters:
        from peftkb.interop.adapters_export import adapters_setup

        setup = adapters_setup(method, {**method.defaults(), **overrides}, d_model=arch.d_model)
        config_text = json.dumps({"config_string": setup.config_string, "config": setup.config}, indent=2) + "\n"
        script = setup.python_script(model_path)
        files = {"adapters_config.json": config_text, "train.py": script}
    else:
        from peftkb.interop.peft_export import config_json, peft_setup, python_script

        setup = peft_setup(method, arch, overrides, target_list)
        config_text = json.dumps(config_json(setup), indent=2, sort_keys=True) + "\n"
        script = python_script(setup, model_path)
        files = {"adapter_config.json": config_text, "train.py": script}
    if output is not None:
        from peftkb.interop.folder import write_new_folder

        def write_files(folder: Path) -> None:
            for name, content in files.items():
                (folder / name).write_text(content, encoding="utf-8")

        write_new_folder(output, write_files, prefix=".peftkb-export-")
        text(f"wrote {output}: {', '.join(files)}")
    else:
        write(script if fmt is ExportFormat.python else config_text)
    if count is not None:
        import sys

        sys.stderr.write(f"# trainable parameters on {arch.name}: {count.trainable:,} (peftkb params)\n")
    for note in getattr(setup, "notes", []):
        import sys

        sys.stderr.write(f"# note: {note}\n")


def register(app: typer.Typer) -> None:
    app.command("export")(export)
