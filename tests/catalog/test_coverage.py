"""The catalog covers the survey's method list and installed peft; and the coverage check itself works."""
from __future__ import annotations

import json

import pytest

from peftkb import coverage
from peftkb.cache import find_root
from peftkb.loader import load_catalog
from tests.conftest import run_cli

SURVEY_FILE = coverage.default_survey_file(find_root())


def test_survey_file_ships_with_the_knowledge_base():
    assert SURVEY_FILE == find_root() / "taxonomy" / "survey-xu2023.yaml"
    assert SURVEY_FILE.is_file(), f"expected the survey's method list at {SURVEY_FILE}"


def test_catalog_covers_every_survey_method_in_its_leaf():
    gaps = coverage.against_survey(load_catalog(), SURVEY_FILE)
    assert gaps == [], "\n".join(f"{g.kind}: {g.subject}: {g.detail}" for g in gaps)


@pytest.mark.peft_oracle
def test_catalog_covers_every_peft_type_and_lora_method_option():
    gaps = coverage.against_peft(load_catalog())
    assert gaps == [], "\n".join(f"{g.kind}: {g.subject}: {g.detail}" for g in gaps)


@pytest.mark.peft_oracle
def test_every_peft_name_in_the_catalog_exists_in_installed_peft():
    import peft

    types = {t.name for t in peft.PeftType}
    for m in load_catalog().methods:
        if m.implementations.peft:
            assert m.implementations.peft.peft_type in types, m.id
            config = m.implementations.peft.config
            if config:
                assert hasattr(peft, config), f"{m.id}: peft has no {config}"


def test_survey_coverage_reports_a_missing_method(kb):
    (kb.root / "catalog" / "bitfit.yaml").unlink(missing_ok=True)
    gaps = coverage.against_survey(load_catalog(kb.root, use_cache=False), SURVEY_FILE)
    assert any(g.kind == "missing" and g.subject == "BitFit" for g in gaps)
    assert not any(g.subject == "LoRA" for g in gaps)


def test_survey_coverage_reports_a_misplaced_method(kb):
    kb.edit("lora.yaml", "  leaf: reparameterized/low-rank-decomposition", "  leaf: reparameterized/lora-derivatives")
    gaps = coverage.against_survey(load_catalog(kb.root, use_cache=False), SURVEY_FILE)
    assert [g.kind for g in gaps if g.subject == "LoRA"] == ["misplaced"]


@pytest.mark.peft_oracle
def test_peft_coverage_reports_missing_types(kb):
    gaps = coverage.against_peft(load_catalog(kb.root, use_cache=False))
    missing = {g.subject for g in gaps if g.kind == "missing"}
    assert "VERA" in missing and "use_dora" in missing and "LORA" not in missing


def test_coverage_cli_exits_2_and_lists_gaps(kb):
    result = run_cli("coverage", "--against", "survey", "--survey-file", str(SURVEY_FILE), "-f", "json", root=kb.root)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert {"kind": "missing", "subject": "WARP",
            "detail": "no entry named 'WARP' (survey leaf additive/soft-prompt-based)"} in json.loads(result.stdout)


def test_crosswalk_command_and_scheme_filter():
    rows = json.loads(run_cli("crosswalk", "bitfit", "-f", "json").stdout)
    by_scheme = {r["scheme"]: r for r in rows}
    assert by_scheme["xu2023"]["class"] == "partial/bias-update"
    assert by_scheme["han2024"]["class"] == "selective" and by_scheme["ding2023"]["class"] == "specification"
    selective = run_cli("list", "--scheme", "han", "--category", "selective", "-f", "ids").stdout.split()
    assert "bitfit" in selective and "lora" not in selective
    assert run_cli("list", "--scheme", "han").returncode == 2


def test_stated_crosswalk_needs_a_section(kb):
    kb.edit("lora.yaml", "han2024: {class: reparameterized, source: derived}", "han2024: {class: reparameterized, source: stated}")
    result = run_cli("validate", root=kb.root)
    assert result.returncode == 2 and "crosswalk.han2024" in result.stderr and "where" in result.stderr


def test_crosswalk_class_must_exist_in_its_scheme(kb):
    kb.edit("lora.yaml", "han2024: {class: reparameterized, source: derived}", "han2024: {class: low-rank, source: derived}")
    result = run_cli("validate", root=kb.root)
    assert result.returncode == 2 and "crosswalk" in result.stderr and "'low-rank' is not one of" in result.stderr
