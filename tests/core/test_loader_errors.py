"""Every loader check, each asserting that the message names the file, the line and the field."""
from __future__ import annotations

import re

import pytest

from peftkb.errors import CatalogError
from peftkb.loader import load_catalog


def problems(kb) -> list[str]:
    with pytest.raises(CatalogError) as info:
        load_catalog(kb.root, use_cache=False)
    return [str(p) for p in info.value.problems]


def only(kb, name: str = "lora.yaml") -> str:
    """The one problem reported in catalog/NAME (others may follow from it, e.g. a dangling relation)."""
    found = [p for p in problems(kb) if p.startswith(f"catalog/{name}:")]
    assert len(found) == 1, problems(kb)
    return found[0]


def line_of(kb, name: str, needle: str) -> int:
    for number, line in enumerate(kb.read(name).splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {name}")


def test_valid_seed_loads(kb):
    catalog = load_catalog(kb.root, use_cache=False)
    assert {m.id for m in catalog.methods} >= {"lora", "mam-adapter"}


def test_yaml_syntax_error_reports_file_and_line(kb):
    kb.edit("lora.yaml", "name: LoRA", "name: [LoRA")
    message = only(kb)
    assert message.startswith("catalog/lora.yaml:")
    assert "YAML syntax error" in message


def test_wrong_type_reports_file_line_and_field(kb):
    kb.edit("lora.yaml", "year: 2021", "year: soon")
    line = line_of(kb, "lora.yaml", "year: soon")
    assert re.match(rf"catalog/lora.yaml:{line}:\d+: year: ", only(kb))


def test_unknown_field_is_rejected_with_suggestion(kb):
    kb.edit("lora.yaml", "summary:", "sumary:")
    found = problems(kb)
    line = line_of(kb, "lora.yaml", "sumary:")
    assert any(re.match(rf"catalog/lora.yaml:{line}:\d+: sumary: unknown field 'sumary' \(did you mean 'summary'", p)
               for p in found), found


def test_unknown_nested_field_names_its_path(kb):
    kb.edit("lora.yaml", "  mergeable: true", "  mergable: true")
    found = problems(kb)
    line = line_of(kb, "lora.yaml", "mergable")
    assert any(p.startswith(f"catalog/lora.yaml:{line}:") and "properties.mergable" in p and "'mergeable'" in p
               for p in found), found


def test_missing_required_field(kb):
    kb.edit("lora.yaml", "name: LoRA\n", "")
    assert re.match(r"catalog/lora.yaml:\d+:\d+: name: required field is missing", only(kb))


def test_id_must_match_file_name(kb):
    kb.edit("lora.yaml", "id: lora", "id: lora-two")
    assert re.match(r"catalog/lora.yaml:2:\d+: id: id 'lora-two' does not match the file name", only(kb))


def test_duplicate_alias_is_rejected_ignoring_case(kb):
    kb.edit("ia3.yaml", "aliases: [IA3, (IA)^3]", "aliases: [IA3, (IA)^3, low-rank adaptation]")
    # files load in name order, so the later file (lora.yaml) is the one that reports the clash
    line = line_of(kb, "lora.yaml", "aliases:")
    message = only(kb, "lora.yaml")
    assert message.startswith(f"catalog/lora.yaml:{line}:")
    assert "aliases[0]" in message and "'Low-Rank Adaptation' is already used by method 'ia3'" in message


def test_unknown_category_suggests_the_right_one(kb):
    kb.edit("lora.yaml", "category: reparameterized/low-rank-decomposition", "category: reparameterized/low-rank-decomposiion")
    line = line_of(kb, "lora.yaml", "category: reparam")
    message = only(kb)
    assert message.startswith(f"catalog/lora.yaml:{line}:") and ": category: unknown category" in message
    assert "did you mean 'reparameterized/low-rank-decomposition'" in message


def test_unknown_survey_leaf(kb):
    kb.edit("lora.yaml", "  leaf: reparameterized/low-rank-decomposition", "  leaf: reparameterized/nowhere")
    line = line_of(kb, "lora.yaml", "leaf: reparameterized/nowhere")
    message = only(kb)
    assert message.startswith(f"catalog/lora.yaml:{line}:") and "survey.leaf" in message


def test_unknown_relation_target_suggests(kb):
    kb.edit("parallel-adapter.yaml", "variant_of: [sequential-adapter]", "variant_of: [sequential-adaptor]")
    line = line_of(kb, "parallel-adapter.yaml", "sequential-adaptor")
    message = only(kb, "parallel-adapter.yaml")
    assert message.startswith(f"catalog/parallel-adapter.yaml:{line}:")
    assert "relations.variant_of[0]: unknown method 'sequential-adaptor'" in message
    assert "did you mean 'sequential-adapter'" in message


def test_cycle_in_variant_of_is_rejected(kb):
    kb.edit("sequential-adapter.yaml", "implementations:", "relations:\n  variant_of: [parallel-adapter]\nimplementations:")
    found = problems(kb)
    assert any("cycle in variant_of/extends" in p and "parallel-adapter" in p and re.match(r"catalog/\S+\.yaml:\d+:\d+: relations:", p)
               for p in found), found


def test_bad_arxiv_id(kb):
    kb.edit("lora.yaml", "arxiv: '2106.09685'", "arxiv: 'arXiv:2106.09685'")
    line = line_of(kb, "lora.yaml", "arxiv:")
    message = only(kb)
    assert message.startswith(f"catalog/lora.yaml:{line}:") and "papers[0].arxiv" in message and "not an arXiv id" in message


def test_bad_doi(kb):
    kb.edit("prompt-tuning.yaml", "doi: 10.18653/v1/2021.emnlp-main.243", "doi: doi.org/2021.emnlp-main.243")
    line = line_of(kb, "prompt-tuning.yaml", "doi:")
    message = only(kb, "prompt-tuning.yaml")
    assert message.startswith(f"catalog/prompt-tuning.yaml:{line}:") and "papers[0].doi" in message and "not a DOI" in message


@pytest.mark.parametrize("year", ["1850", "2099"])
def test_year_out_of_range(kb, year):
    kb.edit("lora.yaml", "year: 2021", f"year: {year}")
    line = line_of(kb, "lora.yaml", f"year: {year}")
    message = only(kb)
    assert message.startswith(f"catalog/lora.yaml:{line}:") and ": year: " in message and "outside" in message


@pytest.mark.parametrize("url", ["javascript:alert(1)", "ftp://example.org/x", "file:///etc/passwd"])
def test_only_http_urls(kb, url):
    kb.edit("lora.yaml", "url: https://openreview.net/forum?id=nZeVKeeFYf9", f"url: '{url}'")
    line = line_of(kb, "lora.yaml", "url:")
    message = only(kb)
    assert message.startswith(f"catalog/lora.yaml:{line}:") and "papers[0].url" in message and "http(s)" in message


@pytest.mark.parametrize("ref, why", [("reference_impls/../peftkb/cli.py", "inside reference_impls/"),
                                      ("/etc/passwd", "inside reference_impls/"),
                                      ("reference_impls/missing.py", "does not exist")])
def test_reference_path_must_be_inside_impls_and_exist(kb, ref, why):
    kb.edit("lora.yaml", "  reference: reference_impls/lora.py", f"  reference: {ref}")
    line = line_of(kb, "lora.yaml", f"reference: {ref}")
    message = only(kb)
    assert message.startswith(f"catalog/lora.yaml:{line}:") and "implementations.reference" in message and why in message


def test_formula_with_unknown_symbol(kb):
    kb.edit("lora.yaml", "per_target: r * (d_in + d_out)", "per_target: rank * (d_in + d_out)")
    line = line_of(kb, "lora.yaml", "per_target:")
    message = only(kb)
    assert message.startswith(f"catalog/lora.yaml:{line}:")
    assert "trainable_params.per_target: unknown symbol 'rank'" in message


def test_formula_with_forbidden_construct(kb):
    kb.edit("lora.yaml", "per_target: r * (d_in + d_out)", "per_target: __import__('os').getpid()")
    line = line_of(kb, "lora.yaml", "per_target:")
    message = only(kb)
    assert message.startswith(f"catalog/lora.yaml:{line}:") and "trainable_params.per_target" in message


def test_per_target_symbols_outside_per_target(kb):
    kb.edit("prompt-tuning.yaml", "total: n_virtual_tokens * d_model", "total: n_virtual_tokens * d_in")
    assert "'d_in' is only defined in per_target formulas" in only(kb, "prompt-tuning.yaml")


def test_oversized_file_is_refused(kb):
    kb.write("huge.yaml", "# " + "x" * 1_100_000 + "\n")
    assert re.match(r"catalog/huge.yaml:1:1: file is 1,100,003 bytes; the limit is 1,000,000", only(kb, "huge.yaml"))


def test_alias_bomb_is_refused(kb):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b, *b]\n"
    kb.write("bomb.yaml", bomb)
    message = only(kb, "bomb.yaml")
    assert message.startswith("catalog/bomb.yaml:1:") and "anchors and aliases are not allowed" in message


def test_python_tags_are_refused(kb):
    kb.edit("lora.yaml", "name: LoRA", "name: !!python/object/apply:os.system ['true']")
    message = only(kb)
    assert message.startswith("catalog/lora.yaml:3:7: name: unsupported YAML tag 'tag:yaml.org,2002:python/object/apply:os.system'")


def test_duplicate_key_is_refused(kb):
    kb.edit("lora.yaml", "year: 2021", "year: 2021\nyear: 2022")
    line = line_of(kb, "lora.yaml", "year: 2022")
    message = only(kb)
    assert message.startswith(f"catalog/lora.yaml:{line}:") and "duplicate key 'year'" in message


def test_taxonomy_parent_mismatch(kb):
    path = kb.root / "taxonomy" / "taxonomy.yaml"
    path.write_text(path.read_text().replace("  parent: additive\n", "  parent: partial\n", 1))
    found = problems(kb)
    assert any(p.startswith("taxonomy/taxonomy.yaml:") and "categories[1].parent" in p for p in found), found


def test_every_problem_is_reported_in_one_pass(kb):
    kb.edit("lora.yaml", "year: 2021", "year: 1700")
    kb.edit("ia3.yaml", "category: additive/others", "category: additive/other-stuff")
    kb.write("bad.yaml", "id: [unclosed\n")
    found = problems(kb)
    files = {p.split(":")[0] for p in found}
    # propetl.yaml's relation to the broken lora.yaml still resolves: one mistake, one report
    assert files == {"catalog/lora.yaml", "catalog/ia3.yaml", "catalog/bad.yaml"}, found
    assert found == sorted(found, key=lambda p: (p.split(":")[0], int(p.split(":")[1])))


# -- bytes that are not YAML text: one problem each, and the other files are still checked ---------
@pytest.mark.parametrize("bad, what", [
    (b"\x01", "character U+0001 is not allowed"),
    (b"\x00", "character U+0000 is not allowed"),
    (b"\x1b[31m", "character U+001B is not allowed"),
    (b"\xff\xfe", "not valid UTF-8 (byte 0xff)"),
    (b"\xc3(", "not valid UTF-8 (byte 0xc3)"),
])
def test_control_characters_and_invalid_utf8_are_one_located_problem(kb, bad, what):
    path = kb.root / "catalog" / "lora.yaml"
    data = path.read_bytes().replace(b"name: LoRA", b"name: Lo" + bad + b"RA", 1)
    path.write_bytes(data)
    kb.edit("ia3.yaml", "year: 2022", "year: 1700")  # another file's problem is still reported
    found = problems(kb)
    line = line_of_bytes(data, b"name: Lo")
    column = data.splitlines()[line - 1].index(bad[:1]) + 1
    assert [p for p in found if p.startswith("catalog/lora.yaml:")] == [
        p for p in found if p.startswith(f"catalog/lora.yaml:{line}:{column}: ") and what in p]
    assert any(p.startswith("catalog/lora.yaml:") for p in found)
    assert any(p.startswith("catalog/ia3.yaml:") and "1700" in p for p in found), found


def line_of_bytes(data: bytes, needle: bytes) -> int:
    return next(i for i, line in enumerate(data.splitlines(), start=1) if needle in line)


def test_invalid_utf8_in_the_taxonomy_is_a_problem_not_a_crash(kb):
    path = kb.root / "taxonomy" / "taxonomy.yaml"
    path.write_bytes(path.read_bytes() + b"\n# \xff\n")
    found = problems(kb)
    assert any(p.startswith("taxonomy/taxonomy.yaml:") and "not valid UTF-8" in p for p in found), found


@pytest.mark.parametrize("value, what", [("9" * 5000, "invalid value"), ("2021-13-45", "month must be in 1..12")])
def test_values_python_cannot_hold_are_located_problems(kb, value, what):
    kb.edit("lora.yaml", "year: 2021", f"year: {value}")
    line = line_of(kb, "lora.yaml", "year: ")
    message = only(kb)
    assert message.startswith(f"catalog/lora.yaml:{line}:7: year: ") and what in message


def test_deep_nesting_is_refused(kb):
    kb.edit("lora.yaml", "year: 2021", "year: 2021\nextra: " + "[" * 200 + "]" * 200)
    line = line_of(kb, "lora.yaml", "extra:")
    message = only(kb)
    assert message.startswith(f"catalog/lora.yaml:{line}:") and "nested more than 50 levels deep" in message


# -- chronology: a lineage relation points back in time -------------------------------------------
@pytest.mark.parametrize("kind", ["variant_of", "extends", "combines", "generalizes"])
def test_a_lineage_relation_to_a_later_method_is_refused(kb, kind):
    # LoRA (2021) may not build on IA3 (2022), which relates to nothing (no cycle to report besides)
    kb.edit("lora.yaml", "implementations:", f"relations:\n  {kind}: [ia3]\nimplementations:")
    line = line_of(kb, "lora.yaml", f"{kind}: [ia3]")
    message = only(kb)
    assert message.startswith(f"catalog/lora.yaml:{line}:") and f"relations.{kind}[0]: 'ia3' (2022) is later" in message
    assert "(2021)" in message


def test_related_to_carries_no_chronology(kb):
    kb.edit("lora.yaml", "implementations:", "relations:\n  related_to: [ia3]\nimplementations:")
    load_catalog(kb.root, use_cache=False)


def test_same_year_lineage_is_allowed(kb):
    # mam-adapter (2021) combines parallel-adapter (2021): same year is not "later"
    catalog = load_catalog(kb.root, use_cache=False)
    years = {m.id: m.year for m in catalog.methods}
    assert years["mam-adapter"] == years["parallel-adapter"]


def test_a_catalog_entry_that_is_not_a_regular_file_is_a_problem(kb):
    import os

    (kb.root / "catalog" / "folder.yaml").mkdir()
    os.mkfifo(kb.root / "catalog" / "pipe.yaml")  # reading it would block for ever
    found = problems(kb)
    assert "catalog/folder.yaml: not a regular file" in [p.replace(":1:1:", ":") for p in found], found
    assert any(p.startswith("catalog/pipe.yaml:1:1: not a regular file") for p in found), found
