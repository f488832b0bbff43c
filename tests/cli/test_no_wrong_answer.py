"""No silently wrong answer: an input that cannot mean what was asked is an error, never an empty or
unrelated result. (The calculator cases live with the calculators' tests.)"""
from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.conftest import ROOT, run_cli


def fails(code: int, *args: str, **kw) -> str:
    result = run_cli(*args, **kw)
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == "" or args[-1] == "json", result.stdout
    return result.stderr


def ok(*args: str, **kw) -> str:
    result = run_cli(*args, **kw)
    assert result.returncode == 0, result.stderr
    return result.stdout


# -- validate DIR: DIR is the root it validates, nothing else ---------------------------------------
@pytest.mark.parametrize("where", ["/", "empty", "catalog-only", "taxonomy-only"])
def test_validate_a_folder_that_is_not_a_knowledge_base_is_an_error(tmp_path, kb, where):
    folder = {"/": tmp_path.anchor, "empty": tmp_path}.get(where, tmp_path / where)
    if where == "catalog-only":
        shutil.copytree(kb.root / "catalog", folder / "catalog")
    elif where == "taxonomy-only":
        shutil.copytree(kb.root / "taxonomy", folder / "taxonomy")
    # $PEFTKB_ROOT points at a valid knowledge base: it must not be validated in DIR's stead
    err = fails(2, "validate", str(folder), root=kb.root)
    assert "is not a knowledge base" in err and str(folder) in err


def test_validate_empty_string_is_an_error(kb):
    assert "empty path" in fails(2, "validate", "", root=kb.root)


def test_validate_a_knowledge_base_with_no_catalog_files_is_an_error(tmp_path, kb):
    shutil.copytree(kb.root / "taxonomy", tmp_path / "taxonomy")
    (tmp_path / "catalog").mkdir()
    assert "holds no catalog files" in fails(2, "validate", str(tmp_path), root=kb.root)


def test_validate_dir_validates_that_dir_not_the_one_in_use(kb, tmp_path):
    good = tmp_path / "good"
    shutil.copytree(kb.root, good)
    kb.edit("lora.yaml", "year: 2021", "year: 1066")
    # $PEFTKB_ROOT names the valid one: DIR (the broken one) is what gets validated, and the other way round
    err = fails(2, "validate", str(kb.root), root=good)
    assert "catalog/lora.yaml:" in err and "1066" in err
    out = ok("validate", str(good), root=kb.root)
    assert out.startswith("valid: ") and f"({good})" in out


def test_validate_dir_counts_the_methods_of_dir(kb):
    data = json.loads(ok("validate", str(kb.root), "--format", "json", root=ROOT))
    assert data["valid"] is True and data["methods"] == len(list((kb.root / "catalog").glob("*.yaml")))


def test_validate_a_file_checks_it_against_its_own_knowledge_base(kb, tmp_path):
    # mam-adapter combines prefix-tuning and parallel-adapter: in a knowledge base without them its
    # relations dangle. Checked with $PEFTKB_ROOT naming that other one, the file is still judged
    # against the folder it lives in.
    other = tmp_path / "other"
    shutil.copytree(kb.root, other)
    for name in ("prefix-tuning.yaml", "parallel-adapter.yaml", "propetl.yaml"):
        (other / "catalog" / name).unlink()
    assert ok("validate", str(kb.root / "catalog" / "mam-adapter.yaml"), root=other).startswith("valid: 1 file(s)")
    err = fails(2, "validate", str(other / "catalog" / "mam-adapter.yaml"), root=kb.root)
    assert "catalog/mam-adapter.yaml:" in err and "unknown method 'prefix-tuning'" in err


@pytest.mark.parametrize("args", [("/no/such/folder",), ("FOLDER", "FILE")])
def test_validate_missing_paths_or_folder_plus_files_are_bad_input(kb, args):
    args = tuple(str(kb.root) if a == "FOLDER" else str(kb.root / "catalog" / "lora.yaml") if a == "FILE" else a
                 for a in args)
    fails(2, "validate", *args, root=kb.root)
