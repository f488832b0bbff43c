"""Every catalog command and output format, run as a subprocess exactly as a user runs it."""
from __future__ import annotations

import csv
import io
import json
import os

import pytest
import yaml

from tests.conftest import ROOT, run_cli


def ok(*args: str, **kw) -> str:
    result = run_cli(*args, **kw)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def fails(code: int, *args: str, **kw):
    result = run_cli(*args, **kw)
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    return result


# -- list ----------------------------------------------------------------------------------------
def test_list_category_includes_its_subtree():
    rows = json.loads(ok("list", "--category", "reparameterized", "--format", "json"))
    ids = {r["id"] for r in rows}
    assert {"lora", "adalora", "qlora"} <= ids
    assert all(r["category"].startswith("reparameterized") for r in rows)
    assert not ids & {"bitfit", "prefix-tuning"}


def test_list_category_accepts_slug_and_name():
    by_slug = ok("list", "-c", "quantization-adaption", "-f", "ids").split()
    by_name = ok("list", "-c", "Quantization Adaption", "-f", "ids").split()
    assert "qlora" in by_slug and by_slug == by_name


@pytest.mark.parametrize("fmt", ["table", "json", "yaml", "csv", "ids"])
def test_list_formats_carry_the_same_methods(fmt):
    out = ok("list", "--in-experiments", "--format", fmt)
    expected = {"sequential-adapter", "prompt-tuning", "prefix-tuning", "ia3", "bitfit", "child-tuning", "lora",
                "adalora", "qlora", "mam-adapter", "propetl", "full-fine-tuning"}
    if fmt == "json":
        ids = {m["id"] for m in json.loads(out)}
    elif fmt == "yaml":
        ids = {m["id"] for m in yaml.safe_load(out)}
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(out)))
        ids = {r["id"] for r in rows}
        assert set(rows[0]) == {"id", "name", "category", "year", "mergeable", "survey", "reference"}
    elif fmt == "ids":
        ids = set(out.split())
    else:  # plain table when stdout is not a terminal: header, rule, one row per method
        lines = out.splitlines()
        assert lines[1].split()[0] == "id" and set(lines[2]) <= {"-", " "}
        ids = {line.split()[0] for line in lines[3:]}
    assert ids == expected


def test_json_output_is_the_full_record():
    rows = json.loads(ok("list", "-c", "low-rank-decomposition", "-f", "json"))
    lora = next(r for r in rows if r["id"] == "lora")
    assert lora["trainable_params"]["per_target"] == "r * (d_in + d_out)"
    assert lora["papers"][0]["arxiv"] == "2106.09685"
    assert all(v is not None for v in lora.values())  # nulls are omitted


def test_list_filters_by_year_property_tag_and_survey():
    since = json.loads(ok("list", "--since", "2023", "-f", "json"))
    assert since and all(m["year"] >= 2023 for m in since)
    until = json.loads(ok("list", "--until", "2019", "-f", "json"))
    assert all(m["year"] <= 2019 for m in until) and "sequential-adapter" in {m["id"] for m in until}
    mergeable = json.loads(ok("list", "--property", "mergeable", "-f", "json"))
    assert mergeable and all(m["properties"]["mergeable"] for m in mergeable)
    not_mergeable = json.loads(ok("list", "--property", "no-mergeable", "-f", "json"))
    assert not_mergeable and not any(m["properties"]["mergeable"] for m in not_mergeable)
    ffn = json.loads(ok("list", "--property", "inserts_at=ffn", "-f", "json"))
    assert ffn and all("ffn" in m["properties"]["inserts_at"] for m in ffn)
    tagged = json.loads(ok("list", "--tag", "low-rank", "-f", "json"))
    assert tagged and all("low-rank" in m["tags"] for m in tagged)
    surveyed = json.loads(ok("list", "--in-survey", "-f", "json"))
    assert surveyed and all(m["survey"]["confidence"] != "not-in-survey" for m in surveyed)
    with_impl = json.loads(ok("list", "--has-impl", "-f", "json"))
    assert all(m["implementations"].get("reference") for m in with_impl)


def test_list_sort_by_year():
    years = [m["year"] for m in json.loads(ok("list", "--sort", "year", "-f", "json"))]
    assert years == sorted(years)


def test_list_bad_arguments_exit_2_with_suggestion():
    assert "did you mean 'mergeable'" in fails(2, "list", "--property", "mergable").stderr
    assert "cannot sort by 'yeer'" in fails(2, "list", "--sort", "yeer").stderr
    fails(2, "list", "--format", "xml")
    fails(2, "list", "--since", "soon")


def test_unknown_category_exits_1_with_suggestion():
    result = fails(1, "list", "--category", "reparametrized")
    assert "did you mean 'reparameterized'" in result.stderr


# -- show, search ----------------------------------------------------------------------------------
def test_show_by_alias_ignoring_case():
    card = ok("show", "low-rank ADAPTATION")
    assert card.startswith("LoRA") and "r * (d_in + d_out)" in card and "arXiv:2106.09685" in card
    assert "confidence: high" in card


@pytest.mark.parametrize("fmt", ["json", "yaml", "csv", "ids"])
def test_show_formats(fmt):
    out = ok("show", "ia3", "-f", fmt)
    if fmt == "json":
        assert json.loads(out)["name"] == "(IA)³"
    elif fmt == "yaml":
        assert yaml.safe_load(out)["implementations"]["peft"]["peft_type"] == "IA3"
    elif fmt == "csv":
        rows = {r["field"]: r["value"] for r in csv.DictReader(io.StringIO(out))}
        assert rows["trainable_params.per_target"] == "is_ffn * d_in + (1 - is_ffn) * d_out"
    else:
        assert out.strip() == "ia3"


def test_show_unknown_method_exits_1_with_suggestions():
    result = fails(1, "show", "lorra")
    assert "no method 'lorra'" in result.stderr and "LoRA" in result.stderr


def test_search_ranks_names_first():
    hits = json.loads(ok("search", "prefix", "-f", "json"))
    assert hits[0]["id"] == "prefix-tuning"
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


def test_search_finds_authors_and_titles():
    assert "qlora" in ok("search", "Dettmers", "-f", "ids").split()
    assert ok("search", "Power of Scale", "-f", "ids").split()[0] == "prompt-tuning"


def test_search_without_hits_exits_1():
    fails(1, "search", "zzzqqq")


# -- tree, stats, cite, graph ----------------------------------------------------------------------
def test_tree_counts_include_subtrees():
    nested = json.loads(ok("tree", "-f", "json"))
    reparam = next(n for n in nested if n["id"] == "reparameterized")
    direct = [m for m in json.loads(ok("list", "-f", "json")) if m["category"] == "reparameterized"]
    assert reparam["methods"] == len(direct) + sum(c["methods"] for c in reparam["children"])
    assert [n["id"] for n in nested][:5] == ["additive", "partial", "reparameterized", "hybrid", "unified"]
    text = ok("tree")
    assert "  LoRA Derivatives [reparameterized/lora-derivatives]" in text
    flat = list(csv.DictReader(io.StringIO(ok("tree", "-f", "csv"))))

    def ids(nodes):
        return [i for n in nodes for i in [n["id"], *ids(n["children"])]]

    assert [r["id"] for r in flat] == ids(nested)
    assert "reparameterized/lora-derivatives/low-rank-adjustment" in ok("tree", "-f", "ids").split()


def test_stats_totals_add_up():
    rows = json.loads(ok("stats", "-f", "json"))
    total = next(r for r in rows if r["category"] == "(all)")
    roots = [r for r in rows if r["category"] in ("additive", "partial", "reparameterized", "hybrid", "unified", "baseline")]
    assert total["methods"] == sum(r["methods"] for r in roots) == len(json.loads(ok("list", "-f", "json")))


def test_cite_produces_bibtex_for_each_paper():
    out = ok("cite", "lora", "prompt-tuning")
    assert out.count("@") == 2 and "@inproceedings{hu2022lora," in out
    assert "doi = {10.18653/v1/2021.emnlp-main.243}" in out
    assert out.count("{") == out.count("}")


def test_cite_category_deduplicates_shared_papers():
    out = ok("cite", "mam-adapter", "parallel-adapter")
    assert out.count("@inproceedings{he2022towards,") == 1


def test_cite_needs_an_argument():
    assert "give at least one method" in fails(2, "cite").stderr


def test_graph_text_lists_the_family():
    out = ok("graph", "sequential-adapter")
    assert "built on by:" in out and "parallel-adapter" in out and "mam-adapter" in out


@pytest.mark.parametrize("fmt, marker", [("mermaid", "graph BT"), ("dot", "digraph lineage"), ("json", '"builds_on"')])
def test_graph_formats(fmt, marker):
    out = ok("graph", "mam-adapter", "-f", fmt)
    assert marker in out
    if fmt == "json":
        data = json.loads(out)
        assert set(data["builds_on"]) >= {"prefix-tuning", "parallel-adapter", "sequential-adapter"}


def test_graph_unknown_method_exits_1():
    fails(1, "graph", "nope-method")


# -- validate, schema, version, completion ------------------------------------------------------------
def test_validate_the_real_catalog():
    assert ok("validate").startswith("valid: ")
    data = json.loads(ok("validate", "--format", "json"))
    assert data["valid"] is True and data["problems"] == []


def test_validate_reports_every_problem_and_exits_2(kb):
    kb.edit("lora.yaml", "year: 2021", "year: 1066")
    kb.edit("ia3.yaml", "mergeable: true", "mergeable: maybe")
    result = fails(2, "validate", root=kb.root)
    assert "catalog/lora.yaml:" in result.stderr and ": year: year 1066 is outside" in result.stderr
    assert "catalog/ia3.yaml:" in result.stderr and "properties.mergeable" in result.stderr
    assert result.stderr.strip().endswith("2 problem(s) found")
    data = json.loads(fails(2, "validate", "--format", "json", root=kb.root).stdout)
    assert data["valid"] is False and {p["file"] for p in data["problems"]} == {"catalog/lora.yaml", "catalog/ia3.yaml"}
    assert all(p["line"] > 0 and p["field"] for p in data["problems"])


def test_validate_named_files_reports_only_them(kb):
    kb.edit("ia3.yaml", "year: 2022", "year: 1066")
    assert ok("validate", str(kb.root / "catalog" / "lora.yaml"), root=kb.root).startswith("valid: 1 file(s)")
    assert "catalog/ia3.yaml" in fails(2, "validate", str(kb.root / "catalog" / "ia3.yaml"), root=kb.root).stderr


def test_other_commands_report_bad_data_without_traceback(kb):
    kb.edit("lora.yaml", "year: 2021", "year: 1066")
    result = fails(2, "list", root=kb.root)
    assert "catalog/lora.yaml:" in result.stderr


def test_committed_schema_is_current():
    assert json.loads(ok("schema")) == json.loads((ROOT / "catalog.schema.json").read_text())


def test_every_catalog_file_points_editors_at_the_schema():
    for path in sorted((ROOT / "catalog").glob("*.yaml")):
        assert path.read_text().startswith("# yaml-language-server: $schema=../catalog.schema.json\n"), path.name


def test_version():
    assert ok("--version").startswith("peftkb ")


def test_shell_completion_offers_method_ids():
    result = run_cli("show", "lo", env={"_PEFTKB_COMPLETE": "complete_bash", "COMP_WORDS": "peftkb show lo",
                                         "COMP_CWORD": "2"})
    assert "lora" in result.stdout.split()


def test_help_lists_every_command():
    out = ok("--help")
    for command in ("list", "show", "search", "tree", "stats", "cite", "graph", "validate", "schema"):
        assert f"  {command} " in out


def test_listing_imports_no_heavy_libraries(tmp_path):
    ok("list")  # warm the cache
    code = ("import sys; sys.argv = ['peftkb', 'list', '-c', 'reparameterized']\n"
            "from peftkb.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'networkx', 'pydantic') if m in sys.modules))")
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy(), check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
