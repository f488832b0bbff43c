"""`peftkb train` in one process on tiny random models: outputs, loading back, merging, resuming, tasks."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from peftkb.cli import app
from peftkb.errors import UsageError
from peftkb.train import data as D
from peftkb.train import loop, outdir
from tests.train.conftest import DATA

runner = CliRunner()
INSTRUCTIONS = str(DATA / "instructions.jsonl")


def train_json(*args: str) -> dict:
    result = runner.invoke(app, ["train", *args, "--format", "json"])
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)  # the progress bar goes to stderr


def losses(out: Path) -> list[float]:
    return [m["loss"] for m in outdir.read_metrics(out / outdir.METRICS) if "loss" in m]


def held_out_loss(model, out: Path) -> dict:
    """The held-out metrics of `model`, recomputed from the run's own record (split, tokenizer, task)."""
    from transformers import AutoTokenizer

    record = json.loads((out / outdir.MARKER).read_text())
    opts = record["options"]
    rows = D.read(Path(opts["data"])).rows
    _, held = D.split(rows, opts["eval_share"], opts["seed"])
    tok = AutoTokenizer.from_pretrained(record["model_folder"])
    enc = D.encode(held, tok, record["task"], record["labels"] or [], opts["seq_len"])
    return loop._evaluate(model, enc, opts["batch_size"], tok.pad_token_id, torch.device("cpu"), record["task"], False)


def test_lora_trains_writes_its_outputs_and_loads_back(tiny_llama_dir, tmp_path):
    out = tmp_path / "run"
    record = train_json("lora", "-m", str(tiny_llama_dir), "-d", INSTRUCTIONS, "-o", str(out), "--max-steps", "12",
                        "--batch-size", "3", "--lr", "1e-2", "--eval-every", "6", "--merge")
    # LoRA r=8 on q (32 -> 32) and v (32 -> 2 kv heads x 8 = 16) in 2 layers: r * (d_in + d_out) each
    assert record["trainable_params"] == 2 * (8 * (32 + 32) + 8 * (32 + 16)) == 1792
    assert record["steps"] == 12 and record["task"] == "causal-lm" and record["processes"] == 1
    assert sorted(p.name for p in out.iterdir()) == sorted(outdir.OURS)
    metrics = outdir.read_metrics(out / outdir.METRICS)
    assert [m["step"] for m in metrics if "loss" in m] == list(range(1, 13))
    assert [m["step"] for m in metrics if "eval_loss" in m] == [6, 12]
    assert all(m["tokens_per_s"] > 0 and m["memory_mb"] > 0 for m in metrics if "loss" in m)
    steps = losses(out)
    assert sum(steps[-3:]) < sum(steps[:3])  # it learns
    saved = json.loads((out / outdir.MARKER).read_text())
    assert saved["status"] == "finished" and saved["method_config"]["r"] == 8

    # the adapter, loaded into a fresh model, gives the held-out loss the run measured at its last step
    model = loop.load(out)
    assert held_out_loss(model, out)["eval_loss"] == pytest.approx(record["eval_loss"], rel=1e-6)

    # merged/: a plain transformers model computing what base + adapter computes, and not the base
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out / outdir.MERGED).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    ids = torch.tensor([[5, 80, 81, 82, 33, 9]])
    with torch.no_grad():
        want, got, before = model(input_ids=ids).logits, merged(input_ids=ids).logits, base(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got - before).abs().max() > 1e-3


def _interrupt_at(monkeypatch, at_step: int) -> None:
    real = loop._step

    def step(model, optimizer, scheduler, hooks, enc, step, *rest):
        if step == at_step:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the run
        return real(model, optimizer, scheduler, hooks, enc, step, *rest)

    monkeypatch.setattr(loop, "_step", step)


def test_an_interrupted_run_resumes_bit_for_bit(tiny_llama_dir, tmp_path, monkeypatch):
    args = ["lora", "-m", str(tiny_llama_dir), "-d", INSTRUCTIONS, "--batch-size", "4", "--lr", "1e-2",
            "--max-steps", "12", "--save-every", "4", "--eval-every", "4", "-s", "dropout=0.1"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train_json(*args, "-o", str(whole))  # 9 steps per epoch: the run crosses into a second epoch

    _interrupt_at(monkeypatch, 6)
    result = runner.invoke(app, ["train", *args, "-o", str(parts)])
    assert result.exit_code != 0 and not (parts / outdir.ADAPTER).exists()
    assert torch.load(parts / outdir.CHECKPOINT, weights_only=True)["step"] == 4  # the last good one
    assert [p.name for p in parts.iterdir() if ".tmp." in p.name] == []
    monkeypatch.undo()

    train_json(*args, "-o", str(parts), "--resume")
    assert (parts / outdir.ADAPTER).read_bytes() == (whole / outdir.ADAPTER).read_bytes()
    assert losses(parts) == losses(whole)  # exactly, dropout included


def test_resuming_with_other_settings_is_refused(tiny_llama_dir, tmp_path):
    out = tmp_path / "run"
    train_json("lora", "-m", str(tiny_llama_dir), "-d", INSTRUCTIONS, "-o", str(out), "--max-steps", "2")
    result = runner.invoke(app, ["train", "lora", "-m", str(tiny_llama_dir), "-d", INSTRUCTIONS, "-o", str(out),
                                 "--max-steps", "4", "--lr", "1e-3", "--resume"])
    assert isinstance(result.exception, UsageError) and "other settings" in str(result.exception)
    result = runner.invoke(app, ["train", "lora", "-m", str(tiny_llama_dir), "-d", INSTRUCTIONS, "-o", str(out),
                                 "--max-steps", "4"])
    assert isinstance(result.exception, UsageError) and "--resume" in str(result.exception)


def test_classification_trains_the_head_and_reports_accuracy(tiny_bert_dir, tmp_path):
    out = tmp_path / "run"
    record = train_json("lora", "-m", str(tiny_bert_dir), "-d", str(DATA / "topics.csv"), "-o", str(out),
                        "--max-steps", "6", "--batch-size", "4", "--lr", "1e-2", "--eval-share", "0.25")
    # LoRA r=8 on BERT's query and value (32 -> 32) in 2 layers, plus the new head: 32 x 3 labels + 3 biases
    assert record["trainable_params"] == 2 * 2 * 8 * (32 + 32) + 32 * 3 + 3
    assert record["task"] == "classification" and 0.0 <= record["eval_accuracy"] <= 1.0
    saved = json.loads((out / outdir.MARKER).read_text())
    assert saved["labels"] == ["cooking", "sport", "weather"] and saved["rows"] == {"train": 27, "eval": 9}
    model = loop.load(out)
    again = held_out_loss(model, out)
    assert again["eval_loss"] == pytest.approx(record["eval_loss"], rel=1e-6)
    assert again["eval_accuracy"] == record["eval_accuracy"]


def test_gradient_checkpointing_changes_memory_not_losses(tiny_llama_dir, tmp_path):
    args = ["lora", "-m", str(tiny_llama_dir), "-d", INSTRUCTIONS, "--max-steps", "3", "--batch-size", "4"]
    train_json(*args, "-o", str(tmp_path / "plain"))
    train_json(*args, "-o", str(tmp_path / "ckpt"), "--gradient-checkpointing")
    assert losses(tmp_path / "ckpt") == pytest.approx(losses(tmp_path / "plain"), rel=1e-5)
    bf16 = train_json(*args, "-o", str(tmp_path / "bf16"), "--bf16")
    assert bf16["loss_first"] == pytest.approx(losses(tmp_path / "plain")[0], rel=2e-2)  # rounding, not a bug


def test_prompt_tuning_wraps_the_model_and_loads_back(tiny_llama_dir, tmp_path):
    out = tmp_path / "run"
    record = train_json("prompt-tuning", "-m", str(tiny_llama_dir), "-d", str(DATA / "notes.jsonl"), "-o", str(out),
                        "--max-steps", "2", "--batch-size", "4", "-s", "n_virtual_tokens=5",
                        "--gradient-checkpointing")
    assert record["trainable_params"] == 5 * 32  # n_virtual_tokens x d_model
    assert held_out_loss(loop.load(out), out)["eval_loss"] == pytest.approx(record["eval_loss"], rel=1e-6)


@pytest.mark.parametrize("args,message", [
    (["prompt-tuning", "--merge"], "does not list prompt-tuning as mergeable"),
    (["sora"], "no reference implementation"),   # with sora's implementation taken away below
    (["lora", "--batch-size", "40"], "fewer than one global batch"),
    (["lora", "-s", "rank=4"], "FIELD one of"),
])
def test_bad_options_are_usage_errors(tiny_llama_dir, tmp_path, args, message, monkeypatch):
    import reference_impls

    # every catalog method has an implementation today: take one away, as a new catalog entry would lack one
    monkeypatch.setattr(reference_impls, "IDS", tuple(i for i in reference_impls.IDS if i != "sora"))
    result = runner.invoke(app, ["train", *args, "-m", str(tiny_llama_dir), "-d", INSTRUCTIONS,
                                 "-o", str(tmp_path / "out")])
    assert isinstance(result.exception, UsageError), result.output
    assert message in str(result.exception)
    assert not (tmp_path / "out").exists()


def test_a_model_that_is_not_a_folder_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["train", "lora", "-m", "smolm2", "-d", INSTRUCTIONS, "-o", str(tmp_path / "o")])
    assert isinstance(result.exception, UsageError) and "did you mean 'smollm2'" in str(result.exception)


def test_the_command_modules_import_no_torch():
    code = ("import sys, peftkb.cli, peftkb.cli.train, peftkb.train, peftkb.train.data, peftkb.train.outdir, "
            "peftkb.train.models; print(sorted(m for m in ('torch', 'transformers', 'accelerate') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
