"""config.json -> Architecture, checked exactly against the transformers models built from the same config."""
from __future__ import annotations

import json

import pytest

from peftkb.calculators.architecture import (ROLES, architecture_from_config, load_model, model_type_of,
                                             preset_names, read_preset)
from peftkb.errors import NotFoundError, UsageError


def test_parameter_table_equals_named_parameters(tiny_case, build):
    name, cfg = tiny_case
    arch = architecture_from_config(cfg, name=name)
    model = build(cfg, device="meta")
    assert type(model).__name__ == arch.head_class
    real = {n: p.numel() for n, p in model.named_parameters()}
    assert dict(arch.params) == real


def test_n_params_and_n_bias_match_the_model(tiny_case, build):
    name, cfg = tiny_case
    arch = architecture_from_config(cfg, name=name)
    model = build(cfg, device="meta")
    assert arch.n_params == sum(p.numel() for p in model.parameters())
    assert arch.n_bias == sum(p.numel() for n, p in model.named_parameters() if n.endswith(".bias"))


def test_linear_inventory_names_and_dims_match_the_model(tiny_case, build, linears):
    name, cfg = tiny_case
    arch = architecture_from_config(cfg, name=name)
    ours = {m.name: (m.d_in, m.d_out, m.bias) for m in arch.modules}
    assert ours == linears(build(cfg, device="meta"))


def test_symbols_match_the_transformers_config(tiny_case, build):
    name, cfg = tiny_case
    arch = architecture_from_config(cfg, name=name)
    hf = build(cfg, device="meta").config
    layers = getattr(hf, "num_hidden_layers", None)
    if arch.family == "t5":
        layers = hf.num_layers + hf.num_decoder_layers
    assert arch.n_layers == layers
    assert arch.d_model == hf.hidden_size
    assert arch.vocab_size == hf.vocab_size
    assert arch.n_heads == hf.num_attention_heads


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "gemma2", "falcon-new-arch"])
def test_kv_projection_size_is_n_kv_heads_times_d_head(tiny, family):
    arch = architecture_from_config(tiny[family])
    k = next(m for m in arch.modules if "k" in m.roles)
    if len(k.roles) == 1:
        assert k.d_out == arch.n_kv_heads * arch.d_head
    else:  # fused query_key_value
        assert k.d_out == (arch.n_heads + 2 * arch.n_kv_heads) * arch.d_head


def test_every_block_module_has_a_role_and_only_heads_have_none(tiny_case):
    _, cfg = tiny_case
    arch = architecture_from_config(cfg)
    for m in arch.modules:
        assert set(m.roles) <= set(ROLES)
        if not m.roles:
            assert m.name in ("lm_head", "pooler.dense")
        else:
            assert m.layer is not None


def test_gpt2_c_attn_is_one_fused_module_with_three_roles(tiny):
    arch = architecture_from_config(tiny["gpt2"])
    c_attn = [m for m in arch.modules if m.kind == "attn.c_attn"]
    assert len(c_attn) == 2 and c_attn[0].roles == ("q", "k", "v")
    assert (c_attn[0].d_in, c_attn[0].d_out) == (64, 192)


def test_t5_decoder_cross_attention_keeps_roles_and_is_flagged(tiny):
    arch = architecture_from_config(tiny["t5-gated-untied"])
    cross = [m for m in arch.modules if m.cross]
    assert {m.role for m in cross} == {"q", "k", "v", "o"}
    assert all(m.stack == "decoder" and "EncDecAttention" in m.name for m in cross)
    assert arch.n_layers == 2 + 3 and arch.gated_ffn
    assert {m.role for m in arch.modules if "wi_" in m.name} == {"gate", "up"}


def test_missing_keys_take_the_transformers_defaults(build):
    """A config with only model_type and sizes gets the same model as transformers builds from it."""
    for cfg in (dict(model_type="t5"), dict(model_type="gpt2", n_layer=2), dict(model_type="bert", num_hidden_layers=2),
                dict(model_type="falcon", num_hidden_layers=1)):
        arch = architecture_from_config(cfg)
        assert arch.n_params == sum(p.numel() for p in build(cfg, device="meta").parameters()), cfg


def test_model_type_falls_back_to_architectures():
    assert model_type_of({"architectures": ["LlamaForCausalLM"]}) == "llama"
    assert model_type_of({"architectures": ["Qwen2ForCausalLM"]}) == "qwen2"
    assert model_type_of({}) is None


def test_unsupported_model_type_is_a_usage_error():
    with pytest.raises(UsageError, match="not supported"):
        architecture_from_config({"model_type": "mamba", "hidden_size": 8})


def test_bad_dimension_is_a_usage_error():
    with pytest.raises(UsageError, match="positive integer"):
        architecture_from_config({"model_type": "llama", "hidden_size": -1, "num_attention_heads": 2,
                                  "num_hidden_layers": 1, "intermediate_size": 4, "vocab_size": 4})


def test_model_spec_accepts_a_file_a_folder_and_a_preset(tmp_path, tiny):
    (tmp_path / "config.json").write_text(json.dumps(tiny["llama"]))
    by_file = load_model(str(tmp_path / "config.json"))
    by_folder = load_model(str(tmp_path))
    assert by_file.n_params == by_folder.n_params == architecture_from_config(tiny["llama"]).n_params
    assert load_model("LLAMA-2-7B").name == "llama-2-7b"
    assert load_model("meta-llama/Llama-2-7b-hf").name == "llama-2-7b"


def test_unknown_preset_suggests_close_names():
    with pytest.raises(NotFoundError, match="did you mean 'llama-2-7b'"):
        load_model("llama-2-7")


def test_folder_without_config_and_invalid_json_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="no config.json"):
        load_model(str(tmp_path))
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        load_model(str(bad))


@pytest.mark.parametrize("name", preset_names())
def test_preset_builds_to_the_same_parameter_count_on_the_meta_device(name, build):
    """Every preset instantiated by transformers (meta device, no memory) has exactly our parameter table."""
    cfg = read_preset(name)
    arch = load_model(name)
    model = build(cfg, device="meta")
    assert arch.n_params == sum(p.numel() for p in model.parameters())
    assert arch.n_bias == sum(p.numel() for n, p in model.named_parameters() if n.endswith(".bias"))
