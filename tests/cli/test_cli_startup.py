"""What a command costs to start: each read command imports neither pydantic, networkx nor torch, and
the root app imports a command's module only when the command runs. (Timings live in
benchmarks/cli_latency.py; these tests check the causes, which do not depend on the machine.)"""
from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys

import pytest

import peftkb.cli as cli
from peftkb import query
from tests.conftest import ROOT, run_cli

READ_COMMANDS = [
    ("list", "--category", "reparameterized"), ("show", "lora"), ("search", "low rank"), ("tree",), ("cite", "lora"),
    ("graph", "lora"), ("stats",), ("crosswalk", "lora"),
]
HEAVY = ("torch", "transformers", "peft", "networkx", "pydantic", "peftkb.model", "peftkb.calculators", "yaml")


def imported_by(*args: str, root) -> list[str]:
    code = (f"import sys; sys.argv = ['peftkb', *{list(args)!r}]\n"
            "from peftkb.cli import main\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    env = {**os.environ, "PEFTKB_ROOT": str(root)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1].replace("'", '"'))


@pytest.mark.parametrize("args", READ_COMMANDS, ids=lambda a: a[0])
def test_read_commands_import_nothing_heavy(kb, args):
    # a private knowledge base, so that nobody's edit of the real catalog makes the cache stale meanwhile
    assert run_cli("list", root=kb.root).returncode == 0  # the cache is warm, as after any first use
    assert imported_by(*args, root=kb.root) == []


def test_the_command_map_names_every_command_of_every_module():
    modules = {m.name for m in pkgutil.iter_modules(cli.__path__)
               if "def register(" in (ROOT / "peftkb" / "cli" / f"{m.name}.py").read_text(encoding="utf-8")}
    assert modules == set(cli.COMMAND_MODULES)
    for module in cli.COMMAND_MODULES:
        registered = set(cli.module_commands(module))
        assert registered == {name for name, owner in cli.COMMANDS.items() if owner == module}, module


def test_help_lists_every_command_in_map_order():
    out = run_cli("--help").stdout
    listed = [line.split()[0] for line in out.split("Commands:")[1].splitlines() if line.startswith("  ")]
    assert listed == list(cli.COMMANDS)


def test_the_light_constants_equal_the_schema():
    from peftkb import model

    assert query.RELATION_KINDS == model.RELATION_KINDS
    assert query.LINEAGE_KINDS == model.LINEAGE_KINDS
    assert query.CROSSWALK_LABELS == {k: label for k, (label, _) in model.CROSSWALK_SCHEMES.items()}


def test_show_json_from_the_index_is_the_typed_dump():
    from peftkb.loader import load_catalog

    typed = {m.id: m for m in load_catalog().methods}
    for method_id in ("lora", "mam-adapter", "full-fine-tuning"):
        shown = json.loads(run_cli("show", method_id, "-f", "json").stdout)
        assert shown == typed[method_id].model_dump(mode="json", by_alias=True, exclude_none=True)
