"""The evidence layer: published runs with provenance, validated like the catalog, shown per method, and used
as an external check of the calculators."""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from peftkb import evidence as ev
from peftkb.errors import CatalogError
from peftkb.loader import load_catalog
from tests.conftest import ROOT, run_cli

SOURCE = ROOT / "evidence" / "peft-metamathqa.yaml"


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture(scope="module")
def peft_source(catalog):
    (source,) = [s for s in ev.load_evidence(ROOT, catalog) if s.id == "peft-metamathqa"]
    return source


def _importer():
    spec = importlib.util.spec_from_file_location("importer", ROOT / "benchmarks/evidence/import_peft_metamathqa.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the committed data ---------------------------------------------------------------------------
def test_every_number_names_its_repository_commit_file_and_field(peft_source):
    p = peft_source.provenance
    assert p.repository == "https://github.com/huggingface/peft" and re.fullmatch(r"[0-9a-f]{40}", p.commit)
    assert set(p.fields) == set(ev.Measured.model_fields)  # every kept number says where it was read
    for run in peft_source.runs:
        assert run.file.startswith(p.path + "/") and run.file.endswith(".json"), run.file


def test_every_run_is_kept_mapped_or_with_the_reason_it_maps_to_none(peft_source, catalog):
    ids = {m.id for m in catalog.methods}
    assert len(peft_source.runs) >= 60
    for run in peft_source.runs:
        assert run.method is None or run.method in ids
        assert run.mapping
    assert {r.experiment for r in peft_source.unmapped()} == {"lora/llama-3.2-3B-rank14-target-mlp-bdlora",
                                                              "lora/llama-3.2-3B-rank32-mica"}


def test_the_llama_fixture_run_is_the_survey_notes_figure(peft_source):
    """LoRA r=32 on q,v of Llama-3.2-3B: 28 x 32 x [(3072+3072) + (3072+1024)] = 9,175,040."""
    (run,) = [r for r in peft_source.runs if r.experiment == "lora/llama-3.2-3B-rank32"]
    assert run.measured.num_trainable_params == 28 * 32 * ((3072 + 3072) + (3072 + 1024))
    assert run.settings == {"r": 32, "alpha": 64, "dropout": 0.0, "target_modules": ["q", "v"]}


# -- validation ------------------------------------------------------------------------------------
@pytest.fixture
def bad_root(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "evidence", tmp_path / "evidence")
    return tmp_path


def _break(root: Path, old: str, new: str) -> None:
    path = root / "evidence" / "peft-metamathqa.yaml"
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


@pytest.mark.parametrize("old, new, field, message", [
    ("num_trainable_params: 9175040", "num_trainable_params: -9175040", "num_trainable_params", "greater than 0"),
    ("num_trainable_params: 9175040", "num_trainable_params: 0", "num_trainable_params", "greater than 0"),
    ("method: lora\n", "method: lorax\n", "method", "unknown catalog method 'lorax'"),
    ("    r: 32\n    alpha: 64\n", "    rank: 32\n    alpha: 64\n", "settings.rank", "'rank' is not a hyperparameter of"),
    ("  status: success\n", "  status: success\n  colour: blue\n", "colour", "Extra inputs are not permitted"),
    ("commit: 5d602f", "commit: 5d60Zf", "provenance.commit", "String should match pattern"),
])
def test_a_bad_run_is_reported_at_file_line_and_field(bad_root, catalog, old, new, field, message):
    _break(bad_root, old, new)
    with pytest.raises(CatalogError) as info:
        ev.load_evidence(bad_root, catalog)
    (problem,) = [p for p in info.value.problems if field in p.field]
    assert problem.file == "evidence/peft-metamathqa.yaml" and problem.line > 1
    assert message in problem.message


def test_yaml_aliases_are_refused_in_evidence_too(bad_root, catalog):
    (bad_root / "evidence" / "peft-metamathqa.yaml").write_text("id: &name x\ntitle: *name\n", encoding="utf-8")
    with pytest.raises(CatalogError, match="aliases"):
        ev.load_evidence(bad_root, catalog)


# -- the importer's mapping -------------------------------------------------------------------------
@pytest.mark.parametrize("name, config, expected", [
    ("lora--x-rank32.json", {"peft_type": "LORA", "use_dora": True}, "dora"),
    ("lora--x-rank64-rslora.json", {"peft_type": "LORA", "use_rslora": True}, "rslora"),
    ("lora--x-rank32-lorafa.json", {"peft_type": "LORA"}, "lora-fa"),
    ("lora--x-rank32.json", {"peft_type": "LORA", "init_lora_weights": True}, "lora"),
    ("lora--x-rank32-mica.json", {"peft_type": "LORA", "init_lora_weights": "mica"}, None),
    ("lora--x-bdlora.json", {"peft_type": "LORA"}, None),
    ("ia3--x-default.json", {"peft_type": "IA3"}, "ia3"),
    ("full-finetuning--x.json", {}, "full-fine-tuning"),
])
def test_runs_map_to_catalog_methods_by_name_and_peft_config(catalog, name, config, expected):
    method, reason = _importer().match_method(name, config, catalog)
    assert method == expected and reason


def test_peft_field_names_become_catalog_names(catalog):
    importer = _importer()
    lora = next(m for m in catalog.methods if m.id == "lora")
    settings = importer.settings_of(lora, {"r": 8, "lora_alpha": 16, "lora_dropout": 0.1,
                                           "target_modules": ["v_proj", "q_proj", "down_proj"]})
    assert settings == {"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["q", "v", "down"]}
    tokens = next(m for m in catalog.methods if m.id == "trainable-tokens")
    assert importer.settings_of(tokens, {"token_indices": [1, 2, 3]})["n_tokens"] == 3
    oft = next(m for m in catalog.methods if m.id == "oft")
    by_count = {"peft_type": "OFT", "r": 32, "oft_block_size": 0, "target_modules": ["q_proj", "v_proj"]}
    assert importer.settings_of(oft, by_count)["block_size"] == 3072 // 32  # r blocks of d_in / r
    by_size = {**by_count, "r": 0, "oft_block_size": 64}
    assert importer.settings_of(oft, by_size)["block_size"] == 64


def test_method_specific_names_and_values_become_the_catalog_choices(catalog):
    importer = _importer()
    methods = {m.id: m for m in catalog.methods}
    assert importer.settings_of(methods["miss"], {"peft_type": "MISS", "init_weights": True})["init"] == "balance"
    assert importer.settings_of(methods["miss"], {"peft_type": "MISS", "init_weights": "mini"})["init"] == "mini"
    glora = importer.settings_of(methods["glora"], {"peft_type": "GLORA", "config_A_B": "vector", "config_C": "none"})
    assert glora["config_a_b"] == "vector" and glora["config_c"] == "none"


def test_an_osf_rank_pattern_that_keeps_t_directions_everywhere_is_trainable_rank_t(catalog):
    importer = _importer()
    osf = next(m for m in catalog.methods if m.id == "osf")
    keep_128 = {"q_proj": 2944, "k_proj": 896, "v_proj": 896, "o_proj": 2944, "gate_proj": 2944, "up_proj": 2944,
                "down_proj": 2944}   # Llama-3.2-3B: min(d_in, d_out) is 3072, or 1024 for k and v
    assert importer.settings_of(osf, {"peft_type": "OSF", "rank_pattern": keep_128})["trainable_rank"] == 128
    uneven = {**keep_128, "k_proj": 900}
    assert "trainable_rank" not in importer.settings_of(osf, {"peft_type": "OSF", "rank_pattern": uneven})


def test_remap_derives_settings_again_and_keeps_every_measured_number(catalog):
    importer = _importer()
    source = yaml.safe_load(SOURCE.read_text(encoding="utf-8"))
    before = {r["experiment"]: (r["measured"], r["settings"]) for r in source["runs"]}
    for run in source["runs"]:
        run["settings"] = {}
    after = importer.remap_runs(source)
    assert {r["experiment"]: (r["measured"], r["settings"]) for r in after["runs"]} == before


# -- the calculators against the published runs --------------------------------------------------------
def test_the_calculators_reproduce_a_published_count_term_by_term(peft_source, catalog):
    checks = {c.experiment: c for c in ev.check_calculators(peft_source, catalog)}
    lora = checks["lora/llama-3.2-3B-rank64"]
    assert lora.counted_params == lora.measured_params == 28 * 64 * ((3072 + 3072) + (3072 + 1024))
    assert lora.memory_error == pytest.approx(lora.estimated_memory / lora.measured_memory - 1)


def test_the_summary_is_the_median_and_worst_of_the_absolute_errors():
    def check(name, method, est):
        return ev.CalculatorCheck(name, method, 10, 10 if method == "a" else 11, 100, est)

    checks = [check("1", "a", 110), check("2", "a", 80), check("3", "b", 103)]
    summary = ev.summarize_checks(checks)
    assert summary["overall"] == {"runs": 3, "params_exact": 2, "memory_median_abs_error": 0.1,
                                  "memory_worst_abs_error": 0.2}
    assert summary["by_method"]["b"]["params_exact"] == 0


def test_the_published_comparison_is_current(catalog):
    """benchmarks/results/calc_vs_peft.json is what the calculators give today (re-run the benchmark)."""
    spec = importlib.util.spec_from_file_location("calc_vs_peft", ROOT / "benchmarks/calc_vs_peft.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = json.loads((ROOT / "benchmarks/results/calc_vs_peft.json").read_text(encoding="utf-8"))
    assert committed == json.loads(json.dumps(module.compare())), "run: python benchmarks/calc_vs_peft.py"


# -- the command ------------------------------------------------------------------------------------
def test_evidence_shows_published_and_own_measurements_with_provenance():
    done = run_cli("evidence", "lora", "--format", "json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    sources = {r["source"] for r in rows}
    assert "peft-metamathqa" in sources and any(s.startswith("peftkb-bench-") for s in sources)
    assert all(r["method"] == "lora" and r["provenance"] for r in rows)
    assert any(r["provenance"].endswith("lora--llama-3.2-3B-rank32.json") for r in rows)


@pytest.mark.parametrize("args, code, message", [
    (("evidence", "lora", "--source", "nope"), 1, "unknown evidence source 'nope'"),
    (("evidence", "nosuchmethod"), 1, "nosuchmethod"),
    (("evidence", "lora", "--unmapped"), 2, "apply to whole sources"),
])
def test_evidence_refuses_bad_input_in_one_line(args, code, message):
    done = run_cli(*args)
    assert done.returncode == code
    assert message in done.stderr and "Traceback" not in done.stderr


def test_unmapped_runs_are_listed_not_dropped():
    done = run_cli("evidence", "--unmapped", "--format", "json")
    assert done.returncode == 0, done.stderr
    assert {r["experiment"] for r in json.loads(done.stdout)} >= {"lora/llama-3.2-3B-rank32-mica"}


def test_validate_checks_the_evidence_with_the_catalog(tmp_path: Path):
    for part in ("taxonomy", "catalog", "evidence", "reference_impls"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    _break(tmp_path, "num_trainable_params: 9175040", "num_trainable_params: -1")
    done = run_cli("validate", str(tmp_path))
    assert done.returncode == 2
    assert "evidence/peft-metamathqa.yaml:" in done.stderr and "num_trainable_params" in done.stderr


def _point(name: str, params: int, accuracy: float | None, memory: int | None = 1) -> ev.Measurement:
    return ev.Measurement("s", name, name, accuracy, "t", "m", params, memory, "k", {}, "p")


def test_the_pareto_front_keeps_what_nothing_beats_on_both_axes():
    points = [_point("a", 10, 0.5), _point("b", 20, 0.4), _point("c", 30, 0.7), _point("d", 5, 0.1),
              _point("e", 40, 0.7), _point("f", 1, None)]
    assert [p.method for p in ev.pareto_front(points)] == ["d", "a", "c"]  # b and e are beaten; f has no accuracy
    by_memory = [_point("x", 1, 0.9, memory=100), _point("y", 1, 0.5, memory=10), _point("z", 1, 0.6, memory=None)]
    assert [p.method for p in ev.pareto_front(by_memory, cost="peak_memory_bytes")] == ["y", "x"]
    with pytest.raises(ValueError):
        ev.pareto_front(points, cost="accuracy")


def test_the_published_front_is_made_of_published_runs(catalog):
    front = ev.pareto_front(ev.published_measurements(ev.load_evidence(ROOT, catalog)))
    assert front and all(p.source == "peft-metamathqa" for p in front)
    accuracies = [p.accuracy for p in front]
    assert accuracies == sorted(accuracies) and len(set(accuracies)) == len(accuracies)
