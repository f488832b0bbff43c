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


# -- list filters: an unknown name is "not found", contradictory filters are bad input ----------------
@pytest.mark.parametrize("args, code, says", [
    (("--scheme", "han", "--category", "nosuch"), 1, "no class 'nosuch' in the han2024 scheme"),
    (("--scheme", "han", "--category", "selectiv"), 1, "did you mean 'selective'"),
    (("--scheme", "lialin", "--category", "additive/adapter"), 1, "did you mean 'additive/adapters'"),
    (("--category", "nosuch"), 1, "no category 'nosuch'"),
    (("--since", "2025", "--until", "2020"), 2, "--since 2025 is after --until 2020"),
    (("--tag", "nosuch-tag"), 1, "no method has the tag 'nosuch-tag'"),
    (("--property", "inserts_at=fnn"), 1, "did you mean 'ffn'"),
    (("--property", "mergeable=maybe"), 2, "true or false"),
    (("--property", "no-mergeable=true"), 2, "not both"),
    (("--property", "mergable"), 2, "did you mean 'mergeable'"),
    (("--sort", "yaer"), 2, "did you mean 'year'"),
    (("--scheme", "nosuch", "--category", "additive"), 2, "unknown scheme 'nosuch'"),
    (("--category", ""), 2, "--category is empty"),
    (("--scheme", "", "--category", "additive"), 2, "--scheme is empty"),
    (("--property", "inserts_at="), 2, "give a value after '='"),
])
def test_list_filters_that_cannot_match_are_errors(args, code, says):
    assert says in fails(code, "list", *args)


def test_a_scheme_class_prefix_selects_its_subclasses():
    ids = set(ok("list", "--scheme", "lialin", "--category", "additive", "-f", "ids").split())
    adapters = set(ok("list", "--scheme", "lialin", "--category", "additive/adapters", "-f", "ids").split())
    assert adapters and adapters < ids


def test_same_year_bounds_are_one_year():
    rows = json.loads(ok("list", "--since", "2021", "--until", "2021", "-f", "json"))
    assert rows and {r["year"] for r in rows} == {2021}


def test_property_values_match_lists_and_plain_values():
    ffn = json.loads(ok("list", "--property", "inserts_at=ffn", "-f", "json"))
    assert ffn and all("ffn" in r["properties"]["inserts_at"] for r in ffn)
    tagged = json.loads(ok("list", "--tag", "low-rank", "-f", "json"))
    assert tagged and all("low-rank" in r["tags"] for r in tagged)


# -- the other read commands ------------------------------------------------------------------------
@pytest.mark.parametrize("args, code, says", [
    (("cite", "--category", "nosuch"), 1, "no category 'nosuch'"),
    (("cite", "lora", "nosuch-method"), 1, "no method 'nosuch-method'"),
    (("cite",), 2, "give at least one method id or --category"),
    (("cite", "--category", ""), 2, "--category is empty"),
    (("show", "lorra"), 1, "did you mean"),
    (("graph", "nosuch-method"), 1, "no method 'nosuch-method'"),
    (("crosswalk", "nosuch-method"), 1, "no method 'nosuch-method'"),
    (("search", ""), 2, "no words to search for"),
    (("search", "?!"), 2, "no words to search for"),
    (("search", "lora", "--limit", "0"), 2, "--limit"),
])
def test_read_commands_refuse_what_cannot_be_answered(args, code, says):
    assert says in fails(code, *args)


def test_search_finds_words_in_any_script():
    # AdapterDrop's first author is Andreas Rücklé: his name is one word, not "r" and "ckl"
    hits = ok("search", "Rücklé", "-f", "ids").split()
    assert "adapterdrop" in hits
