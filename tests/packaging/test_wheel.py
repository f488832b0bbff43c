"""A wheel built from the project carries the knowledge base and works outside any checkout.

The wheel is built here without build isolation (setuptools is in the test environment), unpacked, and
run from an empty folder with only the unpacked wheel ahead of the environment on the path, so the
checkout's editable install is not what answers. `.ci/run` repeats this in a fresh virtual environment
(`make check-wheel`)."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                            "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    (path,) = out.glob("peftkb-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory) -> tuple[Path, Path]:
    site = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    empty = tmp_path_factory.mktemp("empty")
    return site, empty


def peftkb(installed: tuple[Path, Path], *args: str) -> subprocess.CompletedProcess[str]:
    site, empty = installed
    env = {k: v for k, v in os.environ.items() if k not in {"PEFTKB_ROOT", "PYTHONPATH"}}
    env.update(PYTHONPATH=str(site), HOME=str(empty), XDG_CACHE_HOME=str(empty / ".cache"))
    return subprocess.run([sys.executable, "-m", "peftkb", *args], cwd=empty, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_wheel_ships_taxonomy_catalog_survey_schema_and_presets(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    catalog = {n for n in names if n.startswith("peftkb/_kb/catalog/") and n.endswith(".yaml")}
    assert len(catalog) == len(list((ROOT / "catalog").glob("*.yaml")))
    for needed in ("peftkb/_kb/taxonomy/taxonomy.yaml", "peftkb/_kb/taxonomy/survey-xu2023.yaml",
                   "peftkb/_kb/catalog.schema.json", "peftkb/_kb/catalog/UNVERIFIED.md",
                   "peftkb/presets/llama-3.2-3b.json", "reference_impls/lora.py",
                   "peftkb/_kb/evidence/peft-metamathqa.yaml", "peftkb/_kb/benchmarks/results/bench-cpu-quick/results.jsonl"):
        assert needed in names, needed


def test_the_installed_package_answers_from_its_own_data_in_an_empty_folder(installed):
    where = peftkb(installed, "--version")
    assert where.returncode == 0, where.stderr
    listed = peftkb(installed, "list", "--category", "reparameterized", "--format", "ids")
    assert listed.returncode == 0, listed.stderr
    assert {"lora", "adalora", "qlora"} <= set(listed.stdout.split())
    probe = subprocess.run([sys.executable, "-c", "import peftkb.cache as c; print(c.find_root())"],
                           cwd=installed[1], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(installed[0]), "PEFTKB_ROOT": ""})
    assert Path(probe.stdout.strip()) == installed[0] / "peftkb" / "_kb", probe.stderr
    assert not any(installed[1].glob(".peftkb-cache")), "the cache must not land in the user's folder"


@pytest.mark.parametrize("args, expected", [
    (("show", "qlora"), "QLoRA"),
    (("params", "lora", "-m", "llama-3.2-3b", "-s", "r=32", "-t", "q,v"), "9,175,040"),
    (("coverage", "--against", "survey"), "complete"),
    (("validate",), "valid: "),
    (("cite", "lora"), "@inproceedings"),
    (("evidence", "lora"), "peft-metamathqa"),
])
def test_read_commands_and_calculators_work_from_the_wheel(installed, args, expected):
    done = peftkb(installed, *args)
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout


def test_run_trains_a_reference_implementation_from_the_wheel(installed):
    done = peftkb(installed, "run", "lora", "--model", "tiny-llama", "--steps", "3", "--format", "json")
    assert done.returncode == 0, done.stderr[-2000:]
    assert '"trainable_params"' in done.stdout


def test_building_the_site_says_it_needs_a_checkout(installed):
    done = peftkb(installed, "docs", "build")
    assert done.returncode == 2
    assert "checkout" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
