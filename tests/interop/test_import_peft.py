"""A user's peft adapter_config.json, written by peft itself, read back as a catalog method and its settings."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftkb.errors import UsageError
from peftkb.interop.peft_import import method_of, read_peft_config, roles_of, settings_of
from peftkb.loader import load_catalog

peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def _written_by_peft(tmp_path: Path, config) -> Path:
    config.save_pretrained(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("make, expected", [
    (lambda: peft.LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"]), "lora"),
    (lambda: peft.LoraConfig(r=8, use_dora=True, target_modules=["q_proj"]), "dora"),
    (lambda: peft.LoraConfig(r=8, use_rslora=True, target_modules=["q_proj"]), "rslora"),
    (lambda: peft.LoraConfig(r=8, init_lora_weights="pissa", target_modules=["q_proj"]), "pissa"),
    (lambda: peft.LoraConfig(r=8, init_lora_weights="olora", target_modules=["q_proj"]), "olora"),
    (lambda: peft.AdaLoraConfig(init_r=12, target_r=8, total_step=100, target_modules=["q_proj"]), "adalora"),
    (lambda: peft.IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]), "ia3"),
    (lambda: peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=20), "prompt-tuning"),
    (lambda: peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=30), "prefix-tuning"),
    (lambda: peft.LoHaConfig(r=8, target_modules=["q_proj"]), "loha"),
    (lambda: peft.VeraConfig(r=64, target_modules=["q_proj"]), "vera"),
])
def test_a_config_peft_wrote_names_its_catalog_method(tmp_path, catalog, make, expected):
    folder = _written_by_peft(tmp_path, make())
    method, reason = method_of(read_peft_config(folder), catalog)
    assert method == expected, reason


def test_settings_come_back_under_catalog_names(tmp_path, catalog):
    folder = _written_by_peft(tmp_path, peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.1,
                                                        target_modules=["v_proj", "q_proj", "down_proj"]))
    lora = next(m for m in catalog.methods if m.id == "lora")
    assert settings_of(lora, read_peft_config(folder / "adapter_config.json")) == {
        "r": 16, "alpha": 32, "dropout": 0.1, "target_modules": ["q", "v", "down"]}


def test_module_names_of_other_families_become_roles():
    assert roles_of(["query", "value"]) == ["q", "v"]                   # BERT
    assert roles_of(["q", "v", "wo"]) == ["q", "v", "down"]              # T5
    assert roles_of(["model.layers.0.self_attn.k_proj"]) == ["k"]       # a full name
    assert roles_of("all-linear") == "all-linear" and roles_of(["self_attn"]) == ["self_attn"]


def test_a_peft_type_no_entry_implements_is_named(catalog):
    method, reason = method_of({"peft_type": "NOSUCH"}, catalog)
    assert method is None and "NOSUCH" in reason


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe not utf-8", "not UTF-8"),
    (b"{\"peft_type\": ", "not JSON"),
    (b"[1, 2]", "JSON object with a 'peft_type'"),
    (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
])
def test_a_bad_config_file_is_one_clear_error_naming_it(tmp_path, content, message):
    path = tmp_path / "adapter_config.json"
    path.write_bytes(content)
    with pytest.raises(UsageError) as info:
        read_peft_config(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_a_huge_file_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "adapter_config.json"
    with open(path, "wb") as handle:
        handle.truncate(2_000_001)
    with pytest.raises(UsageError, match="is not a peft adapter config"):
        read_peft_config(path)
    with pytest.raises(UsageError, match="no such file"):
        read_peft_config(tmp_path / "missing")


# -- params / memory --peft-config: every catalog method peft has, from a config peft itself wrote ---------
def _peft_methods() -> list[str]:
    return sorted(m.id for m in load_catalog().methods
                  if m.implementations.peft and m.implementations.peft.config and m.trainable_params)


#: Entries whose peft config cannot name them back: peft options that are an optimizer or a quantized base,
#: not a config field (LoRA+, LoRA-FA, QLoRA: the config is plain LoRA) or that need a GPTQ base (QA-LoRA).
INDISTINGUISHABLE = {"lora-plus", "lora-fa", "qlora"}
CANNOT_BUILD = {"xlora": "X-LoRA's catalog default has no LoRA experts (n_adapters = 0): nothing to count"}
TINY = {"adaption-prompt": {"adapter_layers": 2}, "c3a": {"block_size": 16}, "oft": {"block_size": 4},
        "pissa": {"r": 8}, "road": {"group_size": 16}, "shira": {"r": 4}, "vblora": {"vector_length": 16},
        "waveft": {"n_frequency": 256}, "trainable-tokens": {"n_tokens": 2}}


@pytest.mark.parametrize("method_id", _peft_methods())
def test_peft_config_names_its_method_and_counts_what_peftkb_counts(method_id, catalog, tiny_llama_config, tmp_path):
    from peftkb.calculators.architecture import load_model
    from peftkb.calculators.params import count_trainable
    from peftkb.interop.peft_export import build_config, peft_setup

    if method_id in CANNOT_BUILD:
        pytest.xfail(CANNOT_BUILD[method_id])
    method = next(m for m in catalog.methods if m.id == method_id)
    arch = load_model(str(tiny_llama_config))
    overrides = dict(TINY.get(method_id, {}))
    try:
        config = build_config(peft_setup(method, arch, overrides))
    except UsageError as exc:
        pytest.fail(f"export cannot build {method_id}'s peft config: {exc}")
    folder = _written_by_peft(tmp_path, config)
    found, reason = method_of(read_peft_config(folder), catalog)
    if method_id in INDISTINGUISHABLE:
        assert found != method_id and reason  # said plainly, never guessed
        return
    assert found == method_id, reason
    settings = settings_of(method, read_peft_config(folder))
    targets = settings.pop("target_modules", None) if method.trainable_params.per_target else None
    settings.pop("target_modules", None)
    ours = count_trainable(method, arch, {**overrides, **settings}, targets=targets).trainable
    assert ours == count_trainable(method, arch, overrides).trainable


def test_params_and_memory_read_a_peft_config(tmp_path):
    from tests.conftest import run_cli

    folder = _written_by_peft(tmp_path, peft.LoraConfig(r=32, lora_alpha=64, target_modules=["q_proj", "v_proj"]))
    done = run_cli("params", "-m", "llama-3.2-3b", "--peft-config", str(folder), "-f", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["trainable"] == 9_175_040
    mem = run_cli("memory", "-m", "llama-3.2-3b", "--peft-config", str(folder / "adapter_config.json"))
    assert mem.returncode == 0 and "9,175,040 trainable" in mem.stdout
    both = run_cli("params", "lora", "-m", "llama-3.2-3b", "--peft-config", str(folder))
    assert both.returncode == 2 and "leave out METHOD" in both.stderr


def test_show_names_the_method_of_a_peft_config_and_its_place_in_the_taxonomy(tmp_path):
    from tests.conftest import run_cli

    folder = _written_by_peft(tmp_path, peft.LoraConfig(r=8, use_dora=True, target_modules=["q_proj"]))
    done = run_cli("show", "--peft-config", str(folder))
    assert done.returncode == 0, done.stderr
    assert "dora" in done.stdout.splitlines()[0] and "Reparameterized" in done.stdout
    data = json.loads(run_cli("show", "--peft-config", str(folder), "-f", "json").stdout)
    assert data["id"] == "dora" and data["category"].startswith("reparameterized/")
    (tmp_path / "other.json").write_text('{"peft_type": "NOSUCH"}')
    missing = run_cli("show", "--peft-config", str(tmp_path / "other.json"))
    assert missing.returncode == 1 and "NOSUCH" in missing.stderr
