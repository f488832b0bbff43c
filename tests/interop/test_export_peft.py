"""`peftkb export --to peft`: the exported adapter_config.json loads in peft and adapts exactly what
`peftkb params` counts; the exported script runs and trains a step."""
from __future__ import annotations

import json
import runpy
import warnings
from pathlib import Path

import pytest

from peftkb.calculators.architecture import load_model
from peftkb.calculators.params import count_trainable
from peftkb.errors import UsageError
from peftkb.interop.peft_export import config_json, peft_setup, python_script, target_modules
from peftkb.loader import load_catalog
from tests.conftest import run_cli

peft = pytest.importorskip("peft")

#: Settings that make an entry fit the tiny model (its defaults assume a full-size one).
TINY = {"adaption-prompt": {"adapter_layers": 2}, "c3a": {"block_size": 16}, "oft": {"block_size": 4},
        "pissa": {"r": 8}, "road": {"group_size": 16}, "shira": {"r": 4}, "vblora": {"vector_length": 16},
        "waveft": {"n_frequency": 256}, "trainable-tokens": {"n_tokens": 2}}
#: Entries that peft cannot put on a plain tiny Llama, each with peft's reason.
NOT_ON_A_TINY_LLAMA = {
    "qa-lora": "peft builds QA-LoRA only on GPTQ-quantized layers",
    "xlora": "X-LoRA loads trained LoRA adapters from disk; it has no fresh config to export and train",
    "qlora": "QLoRA's script loads the base in 4-bit with bitsandbytes, which needs a GPU (checked as text below)",
    "corda": "CorDA's initialisation needs peft's preprocess_corda over the user's data before get_peft_model",
    "loftq": "peft's LoftQ initialisation quantises with bitsandbytes, which needs a GPU",
}


#: Entries whose catalog count deliberately leaves out parameters that peft registers (the catalog note says why)
COUNT_LEAVES_OUT = {
    "shadow": "peft registers the last block's update modules, whose output is never read; the formula counts what trains",
}


def _methods() -> list[str]:
    return sorted(m.id for m in load_catalog().methods if m.implementations.peft and m.implementations.peft.config)


@pytest.fixture(scope="module")
def catalog():
    return {m.id: m for m in load_catalog().methods}


def test_targets_resolve_to_the_family_module_names_peft_matches():
    assert target_modules(load_model("llama-3.2-3b"), ["q", "v"]) == ["q_proj", "v_proj"]
    assert target_modules(load_model("gpt2"), ["q", "v"]) == ["c_attn"]  # the fused projection, once
    assert target_modules(load_model("bert-base"), ["o", "down"]) == ["output.dense"]  # the tail of both
    down = target_modules(load_model("bert-base"), ["down"])
    assert isinstance(down, str)  # the FFN's `output.dense` alone: only a pattern tells it from attention's
    import re

    names = [m.name for m in load_model("bert-base").modules]
    hits = [n for n in names if re.fullmatch(down, "bert." + n)]
    assert len(hits) == 12 and all(re.search(r"layer\.\d+\.output\.dense$", n) for n in hits)


@pytest.mark.parametrize("method_id", _methods())
def test_exported_config_loads_in_peft_and_adapts_what_peftkb_counts(method_id, catalog, tiny_llama_dir,
                                                                     tiny_llama_config, tmp_path):
    import torch
    import transformers

    if method_id in NOT_ON_A_TINY_LLAMA and method_id != "qlora":  # QLoRA's config is a plain LoraConfig
        pytest.xfail(NOT_ON_A_TINY_LLAMA[method_id])
    method = catalog[method_id]
    arch = load_model(str(tiny_llama_config))
    setup = peft_setup(method, arch, dict(TINY.get(method_id, {})))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "adapter_config.json").write_text(json.dumps(config_json(setup)), encoding="utf-8")
    config = peft.PeftConfig.from_pretrained(str(tmp_path / "out"))
    assert config.peft_type.value == method.implementations.peft.peft_type
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir), config)
    theirs = model.get_nb_trainable_parameters()[0]
    if method.trainable_params:
        overrides = dict(TINY.get(method_id, {}))
        ours = count_trainable(method, arch, overrides).trainable
        if method_id in COUNT_LEAVES_OUT:
            assert 0 < ours < theirs, COUNT_LEAVES_OUT[method_id]
        else:
            assert theirs == ours
    assert theirs > 0
    del torch


@pytest.mark.parametrize("method_id", _methods())
def test_exported_script_runs_and_trains_a_step(method_id, catalog, tiny_llama_dir, tiny_llama_config, capsys):
    if method_id in NOT_ON_A_TINY_LLAMA:
        pytest.xfail(NOT_ON_A_TINY_LLAMA[method_id])
    method = catalog[method_id]
    setup = peft_setup(method, load_model(str(tiny_llama_config)), dict(TINY.get(method_id, {})))
    script = tiny_llama_dir.parent / f"train_{method_id}.py"
    script.write_text(python_script(setup, str(tiny_llama_dir)).replace("'adapter'", repr(str(script) + ".adapter")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert "step 0: loss" in out
    assert (Path(str(script) + ".adapter") / "adapter_config.json").is_file()


def test_qlora_script_quantizes_the_base_and_prepares_it(catalog, tiny_llama_config):
    setup = peft_setup(catalog["qlora"], load_model(str(tiny_llama_config)))
    script = python_script(setup)
    compile(script, "qlora.py", "exec")
    for needed in ("BitsAndBytesConfig(load_in_4bit=True", "bnb_4bit_quant_type='nf4'", "bnb_4bit_use_double_quant=True",
                   "prepare_model_for_kbit_training(model)", "LoraConfig("):
        assert needed in script, needed
    assert script.index("prepare_model_for_kbit_training(model)") < script.index("get_peft_model(model, config)")


def test_adalora_script_calls_update_and_allocate_every_step(catalog, tiny_llama_config):
    script = python_script(peft_setup(catalog["adalora"], load_model(str(tiny_llama_config))))
    assert "update_and_allocate(step)" in script and "total_step=" in script


def test_catalog_names_become_peft_field_names(catalog):
    setup = peft_setup(catalog["lora"], load_model("llama-3.2-3b"), {"r": 32, "alpha": 64}, ["q", "v"])
    assert setup.kwargs["r"] == 32 and setup.kwargs["lora_alpha"] == 64 and "alpha" not in setup.kwargs
    assert setup.kwargs["target_modules"] == ["q_proj", "v_proj"]
    dora = peft_setup(catalog["dora"], load_model("llama-3.2-3b"))
    assert dora.kwargs["use_dora"] is True


@pytest.mark.parametrize("args, message", [
    (("export", "bitfit", "--to", "peft", "-m", "bert-base"), "no peft implementation"),
    (("export", "lora", "--to", "peft", "-s", "r=-4"), "r=-4"),
    (("export", "lora", "--to", "peft", "-s", "rank=4"), "no hyperparameter 'rank'"),
])
def test_export_refuses_bad_input_in_one_line(args, message):
    done = run_cli(*args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_export_writes_a_folder_peft_loads(tmp_path, tiny_llama_config):
    done = run_cli("export", "lora", "--to", "peft", "-m", str(tiny_llama_config), "-s", "r=4", "-o", str(tmp_path / "a"))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["adapter_config.json", "train.py"]
    config = peft.PeftConfig.from_pretrained(str(tmp_path / "a"))
    assert config.r == 4 and sorted(config.target_modules) == ["q_proj", "v_proj"]
    assert "trainable parameters on" in done.stderr


def test_export_never_writes_into_a_folder_that_holds_files(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    done = run_cli("export", "lora", "--to", "peft", "-o", str(out))
    assert done.returncode == 2 and "not an empty folder" in done.stderr
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert not list(tmp_path.glob(".peftkb-export-*"))


@pytest.mark.parametrize("method_id, overrides, field, value", [
    ("miss", {"init": "mini", "r": 4, "mini_r": 8}, "init_weights", "mini"),
    ("miss", {"init": "balance", "r": 4}, "init_weights", True),
    ("glora", {"config_a_b": "vector"}, "config_A_B", "vector"),
    ("road", {"variant": "road_4", "group_size": 16}, "variant", "road_4"),
])
def test_a_string_choice_is_exported_under_peft_name_and_counts_the_same(method_id, overrides, field, value, catalog,
                                                                        tiny_llama_dir, tiny_llama_config, tmp_path):
    import transformers

    method = catalog[method_id]
    arch = load_model(str(tiny_llama_config))
    setup = peft_setup(method, arch, dict(overrides))
    assert setup.kwargs[field] == value and not {"init", "config_a_b"} & set(setup.kwargs)
    (tmp_path / "adapter_config.json").write_text(json.dumps(config_json(setup)), encoding="utf-8")
    config = peft.PeftConfig.from_pretrained(str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir), config)
    assert model.get_nb_trainable_parameters()[0] == count_trainable(method, arch, dict(overrides)).trainable
