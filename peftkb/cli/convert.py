"""`peftkb convert`: a trained adapter between a `peftkb train` output folder and a peft adapter folder."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from peftkb.cli.output import text
from peftkb.errors import UsageError


class Library(str, Enum):
    peft = "peft"


def convert(
    source: Path = typer.Argument(..., metavar="FOLDER", help="A peftkb train output (--to) or a peft adapter (--from)."),
    to: Optional[Library] = typer.Option(None, "--to", help="Write FOLDER (a peftkb run) as this library's adapter."),
    from_: Optional[Library] = typer.Option(None, "--from", help="Read FOLDER as this library's adapter."),
    output: Path = typer.Option(..., "--output", "-o", help="The new folder to write (must not hold files)."),
    model_folder: Optional[str] = typer.Option(None, "--model-folder",
                                               help="With --from: the base model folder to record (default: the "
                                                    "adapter's base_model_name_or_path)."),
) -> None:
    """Convert a trained LoRA, DoRA, LoHa, VeRA, AdaLoRA, IA3, prompt- or prefix-tuning adapter to or from peft."""
    from peftkb.interop import convert as conv

    if (to is None) == (from_ is None):
        raise UsageError("give exactly one of --to peft and --from peft")
    if not source.is_dir():
        raise UsageError(f"{source}: not a folder")
    if to is not None:
        fields = conv.run_to_peft(source, output)
        text(f"wrote {output}: {conv.PEFT_CONFIG} ({fields['peft_type']}) and {conv.PEFT_ADAPTER}")
    else:
        record = conv.peft_to_run(source, output, model_folder)
        text(f"wrote {output}: {conv.RUN_MARKER} ({record['method']}) and {conv.RUN_ADAPTER}")


def register(app: typer.Typer) -> None:
    app.command("convert")(convert)
