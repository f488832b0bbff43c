"""`peftkb bench`: real data loading, the run grid (resume, failure records) and the report."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from peftkb.bench import data, report, runner
from tests.conftest import run_cli


def test_bbc_news_has_2225_articles_in_5_topics():
    texts, labels, names = data.load_bbc_news()
    assert len(texts) == 2225 and names == sorted(names) and len(names) == 5
    assert names == ["business", "entertainment", "politics", "sports", "tech"]
    assert all(t.strip() for t in texts)
    assert sorted(set(labels)) == [0, 1, 2, 3, 4] and min(labels.count(i) for i in range(5)) > 300


def test_decoding_tolerates_windows_1252():
    assert data.decode("caf\xe9 \u201cquoted\u201d".encode("cp1252")) == "café “quoted”"
    assert data.decode("naïve".encode("utf-8")) == "naïve"


def test_split_is_stratified_seeded_and_capped():
    texts, labels, names = data.load_bbc_news()
    a = data.split(texts, labels, names, seed=1, train_per_class=10, test_per_class=4)
    b = data.split(texts, labels, names, seed=1, train_per_class=10, test_per_class=4)
    c = data.split(texts, labels, names, seed=2, train_per_class=10, test_per_class=4)
    assert a == b and a.train_texts != c.train_texts
    assert sorted(a.train_labels) == sorted([i for i in range(5) for _ in range(10)])
    assert [a.test_labels.count(i) for i in range(5)] == [4] * 5
    assert not set(a.train_texts) & set(a.test_texts)
    full = data.split(texts, labels, names, seed=0)
    assert len(full.train_texts) + len(full.test_texts) == 2225


def _spec(model: str, method: str = "lora") -> runner.RunSpec:
    return runner.plan(runner.PROFILES["smoke"], methods=[method], models=[model], seeds=1, epochs=None, device="cpu")[0]


@pytest.mark.slow
def test_failed_run_is_recorded_and_the_others_go_on_then_resume_skips_done(tmp_path):
    good, bad = _spec("tiny-bert"), _spec("no-such-model")
    records = runner.run_grid([bad, good], tmp_path, show_progress=False)
    assert records[bad.key]["status"] == "failed" and "no-such-model" in records[bad.key]["error"]
    ok = records[good.key]
    assert ok["status"] == "ok" and ok["steps"] == 3 and 0 <= ok["accuracy"] <= 1
    assert ok["trainable_params"] == ok["method_params"] + ok["head_params"] and ok["method_params"] > 0
    assert ok["peak_memory_bytes"] > 0 and ok["time_per_step_s"] > 0 and ok["versions"]["torch"]
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2
    # resume: the finished run is kept as it was; only the failed one runs again
    before = json.loads(next(line for line in lines if good.key in line))
    again = runner.run_grid([bad, good], tmp_path, show_progress=False)
    assert again[good.key] == before
    assert again[bad.key]["finished_at"] >= records[bad.key]["finished_at"]


def test_resume_skips_recorded_runs_without_starting_them(tmp_path, monkeypatch):
    spec = _spec("tiny-bert")
    (tmp_path / "results.jsonl").write_text(json.dumps({"key": spec.key, "status": "ok", "accuracy": 0.5}) + "\n{broken\n")
    monkeypatch.setattr(runner, "execute", lambda *a, **k: pytest.fail("a finished run was started again"))
    assert runner.run_grid([spec], tmp_path, show_progress=False)[spec.key]["accuracy"] == 0.5


def _record(method: str, model: str, acc: float, params: int, seed: int = 0, status: str = "ok") -> dict:
    return {"key": f"p/t/{model}/{method}/seed{seed}", "method": method, "model": model, "seed": seed, "status": status,
            "accuracy": acc, "trainable_params": params, "trainable_pct": params / 1e6, "peak_memory_bytes": 2**30,
            "time_per_step_s": 0.5}


def test_report_table_means_and_plots():
    records = [_record("lora", "m", 0.8, 1000, 0), _record("lora", "m", 0.9, 1000, 1), _record("bitfit", "m", 0.7, 100),
               {"key": "p/t/m/qlora/seed0", "method": "qlora", "model": "m", "status": "failed"}]
    cells = report.summarise(records)
    rows = {r["method"]: r for r in report.table_rows(cells)}
    assert rows["lora"]["accuracy"] == "85.0 ± 7.1" and rows["lora"]["runs"] == "2/2"
    assert rows["qlora"]["accuracy"] == "failed" and rows["qlora"]["runs"] == "0/1"
    svg = report.accuracy_vs_params_svg(cells, "m")
    root = ET.fromstring(svg)  # well-formed
    assert root.tag.endswith("svg") and svg.count("<circle") == 2 * 2  # a point and a legend dot per method
    assert "10^2" in svg and "10^3" in svg
    assert ET.fromstring(report.memory_svg(cells, "m")).tag.endswith("svg")


def test_report_escapes_names_in_svg():
    cells = report.summarise([_record("<script>", "m", 0.5, 10)])
    assert "<script>" not in report.accuracy_vs_params_svg(cells, "m")


def test_cli_rejects_unknown_method_model_and_profile(tmp_path):
    assert run_cli("bench", "--methods", "lorra", "--out", str(tmp_path)).returncode == 1
    result = run_cli("bench", "--models", "gpt5", "--out", str(tmp_path))
    assert result.returncode == 2 and "unknown model 'gpt5'" in result.stderr
    assert run_cli("bench", "--profile", "huge", "--out", str(tmp_path)).returncode == 2
    assert run_cli("bench", "report", str(tmp_path)).returncode == 2  # no results there


@pytest.mark.slow
def test_smoke_profile_from_the_cli_records_runs_and_the_command(tmp_path):
    result = run_cli("bench", "--profile", "smoke", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    records = runner.read_results(tmp_path / "results.jsonl")
    assert sorted(r["method"] for r in records.values()) == ["bitfit", "lora"]
    assert all(r["status"] == "ok" for r in records.values())
    log = json.loads((tmp_path / "runs.json").read_text())
    assert log[-1]["command"] == f"peftkb bench --profile smoke --out {tmp_path}" and log[-1]["runs"] == 2
    assert "cores" in log[-1]["machine"] and log[-1]["wall_seconds"] > 0


def test_validation_split_is_held_out_of_training_and_test():
    texts, labels, names = data.load_bbc_news()
    plain = data.split(texts, labels, names, seed=3)
    held = data.split(texts, labels, names, seed=3, val_share=0.1)
    assert held.test_texts == plain.test_texts  # the test set does not move when validation is added
    assert len(held.train_texts) + len(held.val_texts) == len(plain.train_texts)
    seen: dict[str, int] = {}
    for t in texts:
        seen[t] = seen.get(t, 0) + 1
    duplicates = {t for t, n in seen.items() if n > 1}  # BBC News repeats some articles verbatim
    assert set(held.val_texts) & (set(held.train_texts) | set(held.test_texts)) <= duplicates
    per_topic = [held.val_labels.count(i) for i in range(5)]
    assert all(abs(n - 0.1 * (plain.train_labels.count(i))) <= 1 for i, n in enumerate(per_topic))


def test_learning_rate_is_chosen_on_seed_zero_validation_never_on_test():
    rec = lambda lr, val, test, seed=0: {"model": "m", "method": "lora", "seed": seed, "lr": lr, "status": "ok",  # noqa: E731
                                         "val_accuracy": val, "accuracy": test}
    records = [rec(1e-3, 0.90, 0.99), rec(3e-3, 0.92, 0.50), rec(1e-2, 0.92, 0.70), rec(1e-3, 0.99, 0.99, seed=1)]
    assert runner.choose_lr(records) == {("m", "lora"): 3e-3}   # best validation; tie -> smaller rate
    profile = runner.Profile("g", ["lora"], ["m"], 3, 1, {}, {}, {}, {}, val_share=0.1,
                             lr_grid={"lora": [1e-3, 3e-3, 1e-2]})
    first = runner.plan(profile, methods=None, models=None, seeds=None, epochs=None, device="cpu", seed_list=[0])
    assert [s.lr for s in first] == [1e-3, 3e-3, 1e-2] and first[1].key.endswith("/seed0/lr0.003")
    rest = runner.plan(profile, methods=None, models=None, seeds=None, epochs=None, device="cpu", seed_list=[1, 2],
                       chosen_lr=runner.choose_lr(records))
    assert [(s.seed, s.lr) for s in rest] == [(1, 3e-3), (2, 3e-3)]
    # the report keeps only the chosen rate's runs
    full = [dict(r, trainable_params=10, trainable_pct=1.0, peak_memory_bytes=1, time_per_step_s=1.0, steps=5,
                 converged=True) for r in records[:3]] + \
        [dict(rec(3e-3, 0.91, 0.60, seed=s), trainable_params=10, trainable_pct=1.0, peak_memory_bytes=1,
              time_per_step_s=1.0, steps=7, converged=False) for s in (1, 2)]
    (cell,) = report.summarise(full)
    assert cell.lr == 3e-3 and cell.runs == 3 and cell.converged == 1
    assert abs(cell.accuracy_mean - (0.50 + 0.60 + 0.60) / 3) < 1e-12


@pytest.mark.slow
def test_early_stopping_reports_test_accuracy_at_the_best_validation_step(tmp_path):
    profile = runner.Profile("es", ["lora"], ["tiny-bert"], 1, 1, {"tiny-bert": 32}, {"tiny-bert": 8},
                             {"tiny-bert": 8}, {"tiny-bert": 4}, val_share=0.05, eval_every={"tiny-bert": 2},
                             patience=2, step_cap={"tiny-bert": 10})
    specs, records = runner.run_profile(profile, tmp_path, methods=None, models=None, seeds=None, epochs=None,
                                        device="cpu", jobs=2, show_progress=False)
    r = records[specs[0].key]
    assert r["status"] == "ok" and r["n_val"] > 0, r
    curve = r["val_curve"]
    best_step, best_val = max(curve, key=lambda sv: (sv[1], -sv[0]))
    assert r["best_step"] == best_step and abs(r["val_accuracy"] - best_val) < 1e-4
    steps_after_best = sum(1 for s, _ in curve if s > best_step)
    assert (r["stopped"], r["converged"]) == (("patience", True) if steps_after_best >= 2 else ("cap", False))
    assert r["steps"] == (curve[-1][0]) and r["steps"] <= 10 and [s for s, _ in curve] == list(range(2, r["steps"] + 1, 2))
