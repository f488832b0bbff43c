"""`peftkb params`, `peftkb memory` and `peftkb fit`, run as a user runs them."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_cli


def ok(*args: str, **kw) -> str:
    result = run_cli(*args, **kw)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def fails(code: int, *args: str, **kw) -> subprocess.CompletedProcess[str]:
    result = run_cli(*args, **kw)
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    return result


# -- params --------------------------------------------------------------------------------------------
def test_params_fixture_lora_r32_q_v_on_llama_32_3b():
    data = json.loads(ok("params", "lora", "--model", "llama-3.2-3b", "--set", "r=32", "--set", "alpha=64",
                         "--targets", "q_proj,v_proj", "--format", "json"))
    assert data["trainable"] == 9_175_040
    assert data["n_params"] == 3_212_749_824
    assert data["values"]["r"] == 32 and data["values"]["target_modules"] == ["q_proj", "v_proj"]
    assert {row["module"]: row["count"] for row in data["breakdown"]} == {"self_attn.q_proj": 28,
                                                                        "self_attn.v_proj": 28}


def test_params_table_shows_breakdown_total_and_percent():
    out = ok("params", "lora", "--model", "llama-3.2-3b", "--set", "r=32", "-t", "q_proj,v_proj")
    assert "9,175,040 trainable parameters" in out and "0.2856% of 3,212,749,824" in out
    assert re.search(r"self_attn\.q_proj\s+q\s+28\s+3072\s+3072", out)
    assert re.search(r"total\s+9,175,040", out)


def test_params_accepts_a_config_file_and_a_model_folder(tmp_path):
    cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    by_file = json.loads(ok("params", "lora", "--model", str(tmp_path / "config.json"), "-f", "json"))
    by_folder = json.loads(ok("params", "lora", "--model", str(tmp_path), "-f", "json"))
    assert by_file["trainable"] == by_folder["trainable"] == 2 * 8 * ((64 + 64) + (64 + 32))


def test_params_compare_prints_one_table():
    out = ok("params", "lora", "--model", "llama-2-7b", "--compare", "ia3,prompt-tuning,full-fine-tuning",
             "--set", "n_virtual_tokens=20", "--format", "csv")
    lines = out.strip().splitlines()
    assert lines[0] == "method,trainable,percent,exact,formula"
    rows = {line.split(",")[0]: line.split(",")[1] for line in lines[1:]}
    assert rows == {"lora": "4194304", "ia3": "614400", "prompt-tuning": "81920", "full-fine-tuning": "6738415616"}


def test_params_compare_json_carries_every_method():
    data = json.loads(ok("params", "--model", "gpt2", "--compare", "lora,bitfit", "--set", "r=4", "-f", "json"))
    assert [m["method"] for m in data["methods"]] == ["lora", "bitfit"]
    assert data["methods"][0]["trainable"] == 12 * 4 * (768 + 2304)
    assert data["methods"][1]["trainable"] == 102_144


def test_unknown_method_exits_1_with_suggestion():
    result = fails(1, "params", "lroa", "--model", "llama-2-7b")
    assert "did you mean" in result.stderr and "'lora'" in result.stderr


def test_unknown_preset_exits_1_with_suggestion():
    result = fails(1, "params", "lora", "--model", "llama-2-7")
    assert "did you mean 'llama-2-7b'" in result.stderr


def test_method_without_formula_exits_2(kb):
    text = kb.read("prompt-tuning.yaml")
    text = re.sub(r"(?m)^trainable_params:\n(?:[ \t]+.*\n)+", "", text)
    assert "trainable_params" not in text
    kb.write("prompt-tuning.yaml", text)
    result = fails(2, "params", "prompt-tuning", "--model", "gpt2", root=kb.root)
    assert "no trainable-parameter formula" in result.stderr


def test_bad_set_and_bad_target_exit_2():
    assert "has no hyperparameter 'rank'" in fails(2, "params", "lora", "-m", "gpt2", "--set", "rank=4").stderr
    assert "matches no linear module" in fails(2, "params", "lora", "-m", "gpt2", "-t", "q_proj").stderr


def test_params_imports_no_torch():
    code = ("import sys\n"
            "from peftkb.cli import app\n"
            "try:\n"
            "    app(['params', 'lora', '--model', 'llama-2-7b', '--format', 'json'], standalone_mode=False)\n"
            "finally:\n"
            "    print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    payload, _, flag = result.stdout.rstrip().rpartition("\n")
    assert flag == "NO-TORCH"
    assert json.loads(payload)["trainable"] == 4_194_304


# -- memory and fit -----------------------------------------------------------------------------------
def test_memory_json_has_every_term_and_consistent_peak():
    data = json.loads(ok("memory", "qlora", "--model", "llama-2-7b", "--batch", "2", "--seq", "256", "-f", "json"))
    terms = {t["term"]: t["bytes"] for t in data["terms"]}
    assert {"frozen_weights", "trainable_weights", "gradients", "optimizer_states", "activations",
            "overhead"} <= set(terms)
    assert data["quantize"] == "nf4" and data["params"]["trainable"] == 159_907_840
    assert data["peak_bytes"] == data["allocated_bytes"] + terms["overhead"]


def test_memory_explain_shows_formulas():
    out = ok("memory", "lora", "--model", "llama-2-7b", "--batch", "1", "--seq", "128", "--explain")
    assert "formula" in out
    assert "(n_params - trained base weights) * p" in out
    assert "L*B*S'" in out and "note: activation profile: lowrank" in out


def test_memory_options_change_the_estimate():
    def peak(*extra):
        return json.loads(ok("memory", "lora", "-m", "llama-2-7b", "--seq", "1024", "-b", "4", "-f", "json",
                             *extra))["peak_bytes"]
    base = peak()
    assert peak("--gradient-checkpointing") < base
    assert peak("--dtype", "fp32") > base
    assert peak("--quantize", "nf4") < base


def test_memory_bad_dtype_exits_2():
    assert "--dtype" in fails(2, "memory", "lora", "-m", "gpt2", "--dtype", "int3").stderr


def test_fit_lists_fitting_methods_smallest_first():
    data = json.loads(ok("fit", "--model", "llama-2-7b", "--memory", "24GB", "--format", "json"))
    rows = data["methods"]
    ids = [r["method"] for r in rows]
    assert "qlora" in ids and "lora" in ids and "full-fine-tuning" not in ids
    assert all(r["fits"] for r in rows)
    sizes = [r["GiB"] for r in rows]
    assert sizes == sorted(sizes)
    everything = json.loads(ok("fit", "--model", "llama-2-7b", "--memory", "24GB", "--all", "-f", "json"))
    assert any(r["method"] == "full-fine-tuning" and not r["fits"] for r in everything["methods"])


def test_fit_bad_memory_exits_2():
    assert "--memory" in fails(2, "fit", "--model", "gpt2", "--memory", "lots").stderr


# -- no wrong answer: values are checked against their ranges at one boundary ----------------------------
@pytest.mark.parametrize("args, message", [
    (("params", "lora", "-m", "llama-2-7b", "-s", "r=0"), "r=0: 0 is below the minimum 1"),
    (("params", "lora", "-m", "llama-2-7b", "-s", "r=-8"), "below the minimum 1"),
    (("params", "lora", "-m", "llama-2-7b", "-s", "r=5000"), "above the maximum 4096"),
    (("params", "oft", "-m", "llama-2-7b", "-s", "block_size=0"), "block_size"),
    (("memory", "lora", "-m", "llama-2-7b", "-s", "r=-100000"), "below the minimum 1"),
    (("params", "lora", "-m", "gpt2", "-c", "ia3,bitfit", "-s", "r=0"), "below the minimum 1"),
    (("params", "lora", "-m", "gpt2", "-c", "ia3,bitfit", "-s", "rank=4"), "none of the compared methods"),
    (("params", "bitfit", "-m", "gpt2", "-t", "q"), "no per-target formula"),
    (("params", "bitfit", "-m", "gpt2", "-c", "prompt-tuning", "-t", "q"), "none of the compared methods"),
    (("params", "lora", "-m", "gpt2", "-t", "q", "-s", "target_modules=v"), "targets given twice"),
    (("params", "lora", "-m", "gpt2", "-s", "dropout=nan"), "not a valid float"),
    (("fit", "-m", "llama-2-7b", "--memory", "24B"), "give a number and a unit"),
    (("fit", "-m", "llama-2-7b", "--memory", "24"), "give a number and a unit"),
    (("memory", "lora", "-m", "gpt2", "--seq", "2000"), "longer than the 1024 positions"),
    (("memory", "lora", "-m", "llama-2-7b", "--seq", "9" * 30), "--seq"),
    (("memory", "lora", "-m", "llama-2-7b", "--batch", "9" * 30), "--batch"),
    (("fit", "-m", "llama-2-7b", "--memory", "24GB", "--seq", "9" * 30), "--seq"),
])
def test_bad_values_exit_2_with_one_line(args, message):
    result = fails(2, *args)
    assert message in result.stderr, result.stderr


def test_compare_says_which_methods_took_a_setting():
    data = json.loads(ok("params", "lora", "-m", "gpt2", "-c", "bitfit", "-s", "r=4", "-t", "c_attn", "-f", "json"))
    assert data["notes"] == ["r applies to lora only",
                             "--targets applies to lora only (the others have no per-target formula)"]
    assert data["methods"][0]["trainable"] == 12 * 4 * (768 + 2304)


def _config(tmp_path, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize("name, content, message", [
    ("utf8.json", b'{"model_type": "llama", "x": "\xff"}', "not valid UTF-8"),
    ("deep.json", b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
    ("digits.json", b'{"model_type": "llama", "hidden_size": ' + b"9" * 5000 + b"}", "over 4,300 digits"),
    ("huge.json", b'{"model_type": "llama", "hidden_size": ' + b"9" * 4000 + b", \"num_attention_heads\": 2, "
                  b'"num_hidden_layers": 1, "intermediate_size": 4, "vocab_size": 4}', "more than 2,147,483,647"),
    ("heads.json", b'{"model_type": "llama", "hidden_size": 64, "num_attention_heads": 5, "num_hidden_layers": 1, '
                   b'"intermediate_size": 4, "vocab_size": 4}', "not a multiple of num_attention_heads 5"),
    ("kv.json", b'{"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 3, '
                b'"num_hidden_layers": 1, "intermediate_size": 4, "vocab_size": 4}', "not a multiple of num_key_value"),
    ("gpt2.json", b'{"model_type": "gpt2", "n_embd": 64, "n_head": 5}', "not a multiple of n_head 5"),
])
def test_hostile_config_files_exit_2_with_one_line(tmp_path, name, content, message):
    result = fails(2, "params", "lora", "-m", _config(tmp_path, name, content))
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_config_file_over_the_size_cap_is_refused_unread(tmp_path):
    path = tmp_path / "big.json"
    with path.open("wb") as fh:  # sparse: 2 GB on paper, nothing on disk
        fh.truncate(2 * 2**30)
    assert "a config.json is at most 1,000,000" in fails(2, "params", "lora", "-m", str(path)).stderr


def test_memory_states_its_precision_and_mixed_keeps_fp32_master_weights():
    pure = json.loads(ok("memory", "full-fine-tuning", "-m", "gpt2", "--seq", "128", "-f", "json"))
    mixed = json.loads(ok("memory", "full-fine-tuning", "-m", "gpt2", "--seq", "128", "--precision", "mixed",
                          "-f", "json"))
    assert pure["precision"] == "pure-bf16" and mixed["precision"] == "mixed"
    n = pure["trainable"]
    terms = {t["term"]: t["bytes"] for t in mixed["terms"]}
    assert terms["trainable_weights"] == 4 * n and terms["optimizer_states"] == 8 * n
    assert terms["autocast_copies"] == 2 * n
    assert "(precision pure-bf16, the default)" in ok("memory", "lora", "-m", "gpt2", "--seq", "128")
    assert "(precision mixed)" in ok("memory", "lora", "-m", "gpt2", "--seq", "128", "--precision", "mixed")
    assert "(precision mixed)" in ok("fit", "-m", "gpt2", "--memory", "80GB", "--precision", "mixed")
    assert "needs --dtype bf16" in fails(2, "memory", "lora", "-m", "gpt2", "--dtype", "fp16",
                                         "--precision", "pure-bf16").stderr


def test_memory_adapter_dtype_model_halves_the_adapter_state_and_is_refused_where_it_cannot_apply():
    args = ("memory", "lora", "-m", "llama-3.2-3b", "--seq", "128", "--format", "json")
    upcast = json.loads(ok(*args))
    kept = json.loads(ok(*args, "--adapter-dtype", "model"))
    terms = lambda d: {t["term"]: t["bytes"] for t in d["terms"]}  # noqa: E731
    n = upcast["trainable"]
    assert upcast["adapter_dtype"] == "fp32" and kept["adapter_dtype"] == "model"
    for key, per_weight in [("trainable_weights", 1), ("gradients", 1), ("optimizer_states", 2)]:
        assert terms(upcast)[key] == 4 * per_weight * n and terms(kept)[key] == 2 * per_weight * n, key
    assert terms(kept)["frozen_weights"] == terms(upcast)["frozen_weights"]
    assert "adapters in the model dtype" in ok("memory", "lora", "-m", "gpt2", "--seq", "128", "--adapter-dtype", "model")
    assert "mixed" in fails(2, "memory", "lora", "-m", "gpt2", "--adapter-dtype", "model", "--precision", "mixed").stderr
    assert "fp32, model" in fails(2, "memory", "lora", "-m", "gpt2", "--adapter-dtype", "fp16").stderr
