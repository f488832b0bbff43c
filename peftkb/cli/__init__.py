"""The root Typer app. Each command group lives in its own module, imported only when one of its commands runs.

Nothing heavy is imported at module level: torch, transformers and peft are imported inside the
commands that run models, networkx inside the commands that need the graph.
"""
from __future__ import annotations

import importlib
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
import typer.main
from typer.core import TyperGroup

if TYPE_CHECKING:  # typer carries its own copy of Click; importing the click package costs start-up time
    import click

from peftkb import __version__
from peftkb.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, CatalogError, PeftkbError

# Every command and the module that registers it (`register(app)`), in the order of --help. A command's
# module is imported only when that command runs (or --help lists them all), so `peftkb list` never pays
# for the calculators' or the trainer's imports. tests/cli/test_cli_startup.py keeps this map complete.
COMMANDS: dict[str, str] = {
    "list": "catalog", "show": "catalog", "search": "catalog", "tree": "catalog", "stats": "catalog",
    "cite": "catalog", "graph": "graph", "validate": "validate", "schema": "validate", "coverage": "coverage",
    "crosswalk": "coverage", "evidence": "evidence", "export": "export", "convert": "convert", "docs": "docs", "bench": "bench", "params": "calc",
    "memory": "calc", "fit": "calc", "run": "run", "train": "train",
}
COMMAND_MODULES = tuple(dict.fromkeys(COMMANDS.values()))


@lru_cache(maxsize=None)
def module_commands(module: str, only: str | None = None) -> dict[str, click.Command]:
    """The Click commands that `peftkb.cli.<module>` registers (importing it); with `only`, just that one.

    Converting a command reads its parameters' annotations, so converting only the one that runs
    saves the time of the others.
    """
    sub = typer.Typer(rich_markup_mode=None, pretty_exceptions_enable=False)
    importlib.import_module(f"peftkb.cli.{module}").register(sub)
    if only is not None:
        sub.registered_commands = [c for c in sub.registered_commands
                                   if (c.name or typer.main.get_command_name(c.callback.__name__)) == only]
        sub.registered_groups = [g for g in sub.registered_groups if g.name == only]
    return dict(typer.main.get_group(sub).commands)


class _LazyGroup(TyperGroup):
    """The root group: a command is looked up in COMMANDS and its module imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(dict.fromkeys([*COMMANDS, *super().list_commands(ctx)]))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in COMMANDS:
            command = module_commands(COMMANDS[cmd_name], cmd_name).get(cmd_name)
            if command is not None:
                self.add_command(command, cmd_name)
        return command


app = typer.Typer(
    cls=_LazyGroup,
    name="peftkb",
    help="Explore the PEFT knowledge base: methods, taxonomy, lineage, citations and parameter counts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"peftkb {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    root: Optional[Path] = typer.Option(None, "--root", help="Knowledge-base folder (default: this checkout; or $PEFTKB_ROOT).",
                                        file_okay=False, exists=True),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show the Python traceback of an internal error."),
) -> None:
    """Explore the PEFT knowledge base: methods, taxonomy, lineage, citations and parameter counts."""
    if debug:
        os.environ["PEFTKB_DEBUG"] = "1"
    if root is not None:
        from peftkb.cache import CATALOG_DIR, TAXONOMY_FILE
        from peftkb.errors import UsageError

        lacking = [str(part) for part in (TAXONOMY_FILE, CATALOG_DIR) if not (root / part).exists()]
        if lacking:
            raise UsageError(f"--root {root}: not a knowledge base (it has no {' and no '.join(lacking)})")
        os.environ["PEFTKB_ROOT"] = str(root.resolve())


def _debug() -> bool:
    return bool(os.environ.get("PEFTKB_DEBUG")) or "--debug" in sys.argv[1:]


def main() -> None:
    """Console-script entry point: every error becomes one line and an exit code, never a traceback.

    Exit codes: 0 ok, 1 not found, 2 bad input or invalid data, 3 internal error (a bug: the
    traceback is shown with `peftkb --debug ...` or PEFTKB_DEBUG=1), 130 interrupted.
    """
    try:
        app(prog_name="peftkb")
    except CatalogError as exc:
        for problem in exc.problems:
            sys.stderr.write(f"{problem}\n")
        sys.stderr.write(f"{len(exc.problems)} problem(s) found\n")
        sys.exit(exc.exit_code)
    except PeftkbError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(exc.exit_code)
    except BrokenPipeError:  # `peftkb list | head`
        sys.stderr.close()
        sys.exit(0)
    except KeyboardInterrupt:
        sys.exit(130)
    except SystemExit:
        raise
    except OSError as exc:
        if _debug():
            raise
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(EXIT_BAD_INPUT)
    except Exception as exc:  # the last resort: a bug must never look like "not found" or "bad input"
        if _debug():
            raise
        message = str(exc).splitlines()[0][:300] if str(exc) else ""
        sys.stderr.write(f"internal error: {type(exc).__name__}" + (f": {message}" if message else "")
                         + " (a bug in peftkb; re-run as `peftkb --debug ...` for the traceback)\n")
        sys.exit(EXIT_INTERNAL)
