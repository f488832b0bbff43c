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


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "gemma2", "falcon-new-arch", "qwen3", "gemma3_text",
                                    "phi3", "olmo2"])
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


NEW_FAMILY_PRESETS = ["qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-14b-instruct", "qwen3-0.6b", "qwen3-8b", "gemma-2-2b", "gemma-3-1b",
                      "mistral-7b-v0.3", "phi-3-mini-4k", "olmo-2-7b", "olmo-2-13b"]


@pytest.mark.parametrize("name", NEW_FAMILY_PRESETS)
def test_modern_presets_name_their_source_and_how_it_was_checked(name):
    data = read_preset(name)
    assert data["_source"] == f"https://huggingface.co/{data['_hf_id']}/blob/main/config.json"
    assert data["_verified"].startswith("https://huggingface.co/")


@pytest.mark.parametrize("name", [n for n in preset_names() if "_published_params" in read_preset(n)])
def test_preset_total_matches_the_published_size(name):
    """The model card's figures, to the precision they are printed with (non-embedding: without embed/lm_head)."""
    pub = read_preset(name)["_published_params"]
    arch = load_model(name)
    assert abs(arch.n_params - pub["params"]) <= pub["precision"] / 2, (arch.n_params, pub)
    if "non_embedding" in pub:
        embeddings = arch.vocab_size * arch.d_model * (1 if arch.tied_embeddings else 2)
        assert abs(arch.n_params - embeddings - pub["non_embedding"]) <= pub["non_embedding_precision"] / 2


def test_every_modern_family_has_a_preset_or_says_why_not():
    families = {read_preset(n)["model_type"] for n in preset_names()}
    assert {"qwen2", "qwen3", "gemma2", "gemma3_text", "mistral", "phi3", "olmo2"} <= families


@pytest.mark.parametrize("family, fused", [("phi3", {"self_attn.qkv_proj": ("q", "k", "v"),
                                                     "mlp.gate_up_proj": ("gate", "up")})])
def test_phi3_fused_projections_count_once_with_their_full_width(tiny, family, fused):
    arch = architecture_from_config(tiny[family])
    for kind, roles in fused.items():
        ms = [m for m in arch.modules if m.kind == kind]
        assert len(ms) == arch.n_layers and all(m.roles == roles for m in ms)
    qkv = next(m for m in arch.modules if m.kind == "self_attn.qkv_proj")
    assert qkv.d_out == (arch.n_heads + 2 * arch.n_kv_heads) * arch.d_head
    assert next(m for m in arch.modules if m.kind == "mlp.gate_up_proj").d_out == 2 * arch.d_ff


def test_head_dim_defaults_follow_the_config_classes():
    """Qwen3 and Gemma 3 take head_dim from their config class (128, 256), never d_model / n_heads."""
    base = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=2, vocab_size=100)
    assert architecture_from_config(dict(model_type="qwen3", **base)).d_head == 128
    assert architecture_from_config(dict(model_type="gemma3_text", **base)).d_head == 256
    assert architecture_from_config(dict(model_type="mistral", **base)).d_head == 32
