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
    # run's tiny-llama (d_model 128, 2 kv heads of 32, 6 layers): per layer q 8*(128+128) + v 8*(128+64)
    assert record["trainable_params"] == 6 * (8 * 256 + 8 * 192) == 21504
    assert record["trainable_pct"] == pytest.approx(100 * 21504 / record["base_params"], abs=1e-4)
    assert record["method"] == "lora" and record["model"] == "tiny-llama" and record["steps"] == 3
    assert record["loss_start"] > 0 and record["loss_end"] > 0
    assert record["time_per_step_ms"] > 0
    assert record["peak_memory_kind"] == "cpu_peak_rss" and record["peak_memory_mb"] > 0


def test_set_overrides_a_config_field():
    assert run_json("lora", "--steps", "1", "--set", "r=2")["trainable_params"] == 21504 // 4


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


def test_method_without_reference_implementation_is_a_usage_error(monkeypatch):
    import reference_impls

    # every catalog method has one today: take one away, as a new catalog entry would lack one
    monkeypatch.setattr(reference_impls, "IDS", tuple(i for i in reference_impls.IDS if i != "sora"))
    result = runner.invoke(app, ["run", "sora"])
    assert isinstance(result.exception, UsageError) and result.exception.exit_code == 2
    assert "no reference implementation" in str(result.exception) and "lora" in str(result.exception)


@pytest.mark.parametrize("args,message", [
    (["lora", "--set", "rank=4"], "FIELD one of"),
    (["lora", "--set", "r=four"], "not a valid int"),
    (["lora", "--model", "no-such-model"], "unknown model"),
    # one boundary for the options and the --set values (issue 12, section 3)
    (["lora", "--lr", "nan"], "--lr nan: must be a finite number > 0"),
    (["lora", "--lr", "inf"], "--lr inf"),
    (["lora", "--lr", "0"], "--lr 0.0"),
    (["lora", "--steps", "0"], "--steps 0"),
    (["lora", "--seed", str(2**64)], "--seed"),
    (["lora", "--seed", "-1"], "--seed"),
    (["lora", "--set", "r=0"], "r=0"),
    (["lora", "--set", "r=-1"], "r=-1"),
    (["lora", "--set", "dropout=nan"], "finite"),
    (["lora", "--set", "r=1000"], "range"),                    # the catalog's 1..min(d_in, d_out)
    (["compacter", "--set", "reduction_factor=-4"], "negative"),
    (["attempt", "--model", "tiny-bert", "--set", "n_virtual_tokens=300"], "positions"),
    (["spot", "--model", "tiny-gpt2", "--set", "n_virtual_tokens=300"], "positions"),
    (["multitask-prompt-tuning", "--model", "tiny-bert", "--set", "n_virtual_tokens=300"], "positions"),
    (["warp", "--model", "tiny-bert", "--set", "mask_token_id=500"], "vocabulary"),
    (["warp", "--model", "tiny-llama"], "(llama)"),
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


def test_every_catalog_method_has_a_reference_implementation_to_run():
    import reference_impls
    from peftkb.cli.common import index

    assert sorted(m.id for m in index().methods) == sorted(reference_impls.IDS)


@pytest.mark.parametrize("args,code", [(["lorra"], 1), (["lora", "--set", "r=0"], 2)])
def test_exit_codes_as_a_user_sees_them(args, code):
    result = run_cli("run", *args)
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


def test_a_run_that_trains_nothing_is_refused_with_the_reason():
    for method in ("bitfit", "u-s-bitfit"):
        for model in ("tiny-llama", "tiny-t5"):  # no bias terms
            result = runner.invoke(app, ["run", method, "--model", model, "--steps", "2"])
            assert isinstance(result.exception, UsageError) and result.exception.exit_code == 2
            assert "no trainable parameter" in str(result.exception) and "tiny-bert" in str(result.exception)


def test_a_run_whose_loss_never_changes_is_refused():
    result = runner.invoke(app, ["run", "lora", "--steps", "2", "--lr", "1e-30"])
    assert isinstance(result.exception, UsageError) and result.exception.exit_code == 2
    assert "never changed" in str(result.exception)


def test_qlora_counts_the_base_in_parameters_not_packed_bytes():
    from peftkb.cli.run import load_model
    from reference_impls._core import n_params

    record = run_json("qlora", "--steps", "2")
    assert record["base_params"] == n_params(load_model("tiny-llama", 0))  # the unquantized model
    assert record["trainable_pct"] == pytest.approx(100 * record["trainable_params"] / record["base_params"], abs=1e-4)
    assert 0 < record["trainable_pct"] < 100


def test_catalog_defaults_run_on_the_bundled_models():
    """The defaults that did not fit the earlier 2-layer, 32-wide models (issue 12, section 4)."""
    assert run_json("adapterdrop", "--model", "tiny-bert", "--steps", "2")["config"]["dropped_layers"] == 5
    assert run_json("compacter", "--model", "tiny-bert", "--steps", "2")["trainable_params"] > 0
    assert run_json("krona", "--model", "tiny-llama", "--steps", "2")["trainable_params"] > 0


def test_a_model_folder_whose_config_is_not_a_file_is_a_usage_error(tmp_path):
    (tmp_path / "m" / "config.json").mkdir(parents=True)
    result = runner.invoke(app, ["run", "lora", "--model", str(tmp_path / "m")])
    assert isinstance(result.exception, UsageError) and "config.json" in str(result.exception)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_bytes(b"\xff\xfe{not json")
    result = runner.invoke(app, ["run", "lora", "--model", str(tmp_path / "bad")])
    assert isinstance(result.exception, UsageError) and "config.json" in str(result.exception)


def test_help_lists_the_models_each_restricted_method_supports():
    from peftkb.cli.run import UNSUPPORTED, supported_models

    result = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "1000"}, terminal_width=1000)
    assert result.exit_code == 0
    text = "".join(result.output.split())  # without white space: rich may wrap a long line at a hyphen
    for method in UNSUPPORTED:
        assert f"{method}:{','.join(supported_models(method))}" in text, method
    assert supported_models("ciat") == ["tiny-t5"]
