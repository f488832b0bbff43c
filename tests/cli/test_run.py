"""`peftkb run`: train a reference implementation on a tiny model and report what it cost."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from peftkb.cli import app
from peftkb.errors import NotFoundError, UsageError
from tests.conftest import run_cli

runner = CliRunner()


def run_json(*args: str) -> dict:
    result = runner.invoke(app, ["run", *args, "--format", "json"])
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)  # the progress bar goes to stderr, so stdout is pure JSON


def test_run_lora_reports_parameters_losses_time_and_memory():
    record = run_json("lora", "--steps", "3")
    # tiny-llama (d_model 32, 2 kv heads of 8): per layer q 8*(32+32) + v 8*(32+16) = 896, two layers
    assert record["trainable_params"] == 1792
    assert record["trainable_pct"] == pytest.approx(100 * 1792 / record["base_params"], abs=1e-4)
    assert record["method"] == "lora" and record["model"] == "tiny-llama" and record["steps"] == 3
    assert record["loss_start"] > 0 and record["loss_end"] > 0
    assert record["time_per_step_ms"] > 0
    assert record["peak_memory_kind"] == "cpu_peak_rss" and record["peak_memory_mb"] > 0


def test_set_overrides_a_config_field():
    assert run_json("lora", "--steps", "1", "--set", "r=2")["trainable_params"] == 1792 // 4


def test_method_is_found_by_alias():
    assert run_json("Low-Rank Adaptation", "--steps", "1")["method"] == "lora"


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-t5", "tiny-gpt2"])
def test_every_tiny_model_runs(model):
    record = run_json("ia3", "--model", model, "--steps", "2")
    assert record["model"] == model and record["trainable_params"] > 0


def test_training_lowers_the_loss():
    record = run_json("lora", "--steps", "20", "--lr", "0.02")
    assert record["loss_end"] < record["loss_start"]


def test_table_output_lists_fields():
    result = runner.invoke(app, ["run", "bitfit", "--model", "tiny-gpt2", "--steps", "1"])
    assert result.exit_code == 0, result.output
    assert "trainable_params" in result.stdout and "peak_memory_mb" in result.stdout


def test_unknown_method_is_not_found_with_a_suggestion():
    result = runner.invoke(app, ["run", "lorra"])
    assert isinstance(result.exception, NotFoundError) and result.exception.exit_code == 1
    assert "did you mean" in str(result.exception) and "'lora'" in str(result.exception).lower()


def test_method_without_reference_implementation_is_a_usage_error():
    result = runner.invoke(app, ["run", "dora"])
    assert isinstance(result.exception, UsageError) and result.exception.exit_code == 2
    assert "no reference implementation" in str(result.exception) and "lora" in str(result.exception)


@pytest.mark.parametrize("args,message", [
    (["lora", "--set", "rank=4"], "FIELD one of"),
    (["lora", "--set", "r=four"], "not a valid int"),
    (["lora", "--model", "no-such-model"], "unknown model"),
])
def test_bad_input_is_a_usage_error(args, message):
    result = runner.invoke(app, ["run", *args])
    assert isinstance(result.exception, UsageError), result.output
    assert message in str(result.exception)


def test_device_cuda_runs_there_or_is_a_usage_error_without_one():
    import torch

    if torch.cuda.is_available():
        assert run_json("lora", "--steps", "2", "--device", "cuda")["peak_memory_kind"] == "cuda_max_memory_allocated"
    else:
        result = runner.invoke(app, ["run", "lora", "--device", "cuda"])
        assert isinstance(result.exception, UsageError) and "CUDA" in str(result.exception)


@pytest.mark.parametrize("method,code", [("lorra", 1), ("dora", 2)])
def test_exit_codes_as_a_user_sees_them(method, code):
    result = run_cli("run", method)
    assert result.returncode == code, result.stderr
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_model_can_be_a_local_folder(tmp_path):
    from reference_impls._core import tiny_model

    tiny_model("tiny-gpt2").save_pretrained(tmp_path / "gpt2")
    record = run_json("lora", "--model", str(tmp_path / "gpt2"), "--steps", "1")
    assert record["base_params"] == 32768 and record["trainable_params"] > 0


def test_registering_the_command_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, peftkb.cli, reference_impls; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
