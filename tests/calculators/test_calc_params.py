"""Catalog formula x architecture: the fixture, known model sizes, target selection and hyperparameters."""
from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from peftkb.calculators.architecture import architecture_from_config, load_model, preset_names, read_preset
from peftkb.calculators.params import count_trainable, parse_assignments, select_modules
from peftkb.errors import UsageError
from peftkb.loader import load_catalog
from peftkb.query import find_method


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def method(catalog, mid):
    return find_method(catalog, mid)


def fake_method(**tp):
    """A method-like object (the calculator only reads attributes)."""
    hps = [NS(name="r", type="int", default=4), NS(name="k_extra", type="int", default=None),
           NS(name="mode", type="str", default="a")]
    return NS(id="fake", name="Fake", aliases=[], hyperparameters=hps,
              trainable_params=NS(per_target=tp.get("per_target"), per_layer=tp.get("per_layer"),
                                  total=tp.get("total"), targets=tp.get("targets", []), exact=True, note=None),
              properties=NS(trains_base_weights=False))


# -- the fixture and published sizes ------------------------------------------------------------------
def test_lora_r32_on_q_v_of_llama_32_3b_is_9175040(catalog):
    lora = method(catalog, "lora")
    count = count_trainable(lora, load_model("llama-3.2-3b"), parse_assignments(lora, ["r=32", "alpha=64"]),
                            targets="q_proj,v_proj")
    assert count.trainable == 9_175_040
    assert {r.module: r.params for r in count.rows} == {"self_attn.q_proj": 28 * 32 * 6144,
                                                       "self_attn.v_proj": 28 * 32 * 4096}


def test_role_targets_give_the_same_count_as_module_names(catalog):
    lora = method(catalog, "lora")
    arch = load_model("llama-3.2-3b")
    by_role = count_trainable(lora, arch, {"r": 32}, targets=["q", "v"])
    by_default = count_trainable(lora, arch, {"r": 32})  # catalog targets: q, v
    assert by_role.trainable == by_default.trainable == 9_175_040


@pytest.mark.parametrize("name, n_params", [
    ("llama-2-7b", 6_738_415_616), ("llama-3-8b", 8_030_261_248), ("mistral-7b", 7_241_732_096),
    ("gpt2", 124_439_808), ("bert-base", 109_482_240), ("t5-base", 222_903_552), ("llama-2-70b", 68_976_648_192),
])
def test_preset_parameter_counts_match_published_sizes(name, n_params):
    assert load_model(name).n_params == n_params


def test_qlora_defaults_on_llama_2_7b_train_159_9m(catalog):
    """r=64 on all seven linear layers of every block: the count quoted for QLoRA on LLaMA-7B."""
    assert count_trainable(method(catalog, "qlora"), load_model("llama-2-7b")).trainable == 159_907_840


def test_full_fine_tuning_is_100_percent_and_bitfit_counts_biases(catalog):
    gpt2 = load_model("gpt2")
    full = count_trainable(method(catalog, "full-fine-tuning"), gpt2)
    assert full.trainable == gpt2.n_params and full.percent == 100.0
    assert count_trainable(method(catalog, "bitfit"), gpt2).trainable == gpt2.n_bias == 102_144


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_records_an_https_source_and_its_hub_id(name):
    data = read_preset(name)
    assert data["_source"].startswith("https://")
    assert "/" in data["_hf_id"]


# -- target selection ---------------------------------------------------------------------------------
def test_gpt2_fused_c_attn_counts_once_for_q_and_v(catalog):
    count = count_trainable(method(catalog, "lora"), load_model("gpt2"), {"r": 8})
    assert [(r.module, r.count, r.d_out) for r in count.rows] == [("attn.c_attn", 12, 2304)]
    assert count.trainable == 12 * 8 * (768 + 2304)
    assert any("fused" in n for n in count.notes)


def test_t5_role_targets_include_cross_attention(catalog, tiny):
    arch = architecture_from_config(tiny["t5"])
    mods = select_modules(arch, ["q", "v"])
    assert sum(m.cross for m in mods) == 2 * 2  # q and v of EncDecAttention in 2 decoder blocks
    assert len(mods) == 2 * 2 + 2 * 4


def test_suffix_target_matches_like_peft(tiny):
    arch = architecture_from_config(tiny["bert"])
    names = {m.name for m in select_modules(arch, ["output.dense"])}
    assert names == {f"encoder.layer.{i}.{s}" for i in range(2) for s in ("attention.output.dense", "output.dense")}
    down_only = {m.name for m in select_modules(arch, ["down"])}
    assert down_only == {"encoder.layer.0.output.dense", "encoder.layer.1.output.dense"}


def test_unknown_target_name_is_an_error_with_suggestion(catalog):
    with pytest.raises(UsageError, match="did you mean 'q_proj'"):
        count_trainable(method(catalog, "lora"), load_model("llama-2-7b"), targets="q_prj")


def test_missing_role_is_skipped_with_a_note(catalog):
    count = count_trainable(method(catalog, "qlora"), load_model("bert-base"))
    assert count.trainable == 12 * 64 * (4 * (768 + 768) + (768 + 3072) + (3072 + 768))
    assert any("gate" in n for n in count.notes)


def test_per_target_formula_with_no_matching_module_is_an_error(tiny):
    with pytest.raises(UsageError, match="matches a linear module"):
        count_trainable(fake_method(per_target="r * d_in", targets=["gate"]), architecture_from_config(tiny["bert"]))


# -- hyperparameters and scopes -----------------------------------------------------------------------
def test_set_values_are_typed_and_unknown_names_rejected(catalog):
    lora = method(catalog, "lora")
    assert parse_assignments(lora, ["r=16", "alpha=32.5", "target_modules=q,k"]) == {
        "r": 16, "alpha": 32.5, "target_modules": ["q", "k"]}
    with pytest.raises(UsageError, match="has no hyperparameter 'rank'"):
        parse_assignments(lora, ["rank=4"])
    with pytest.raises(UsageError, match="not a valid int"):
        parse_assignments(lora, ["r=four"])
    with pytest.raises(UsageError, match="NAME=VALUE"):
        parse_assignments(lora, ["r"])
    assert parse_assignments(lora, ["rank=4"], strict=False) == {}


def test_target_modules_set_value_selects_targets(catalog):
    lora = method(catalog, "lora")
    arch = load_model("llama-2-7b")
    count = count_trainable(lora, arch, parse_assignments(lora, ["target_modules=q,k,v,o"]))
    assert count.trainable == 32 * 8 * 4 * (4096 + 4096)


def test_three_scopes_add_up(tiny):
    arch = architecture_from_config(tiny["llama"])
    m = fake_method(per_target="r * d_out", per_layer="d_model", total="vocab_size", targets=["q"])
    count = count_trainable(m, arch)
    assert count.trainable == 2 * 4 * 64 + 2 * 64 + 100
    assert [r.scope for r in count.rows] == ["per_target", "per_layer", "total"]


def test_n_targets_is_targets_per_block(tiny):
    arch = architecture_from_config(tiny["llama"])
    m = fake_method(per_target="0", total="n_targets * n_layers", targets=["q", "k", "v"])
    assert count_trainable(m, arch).trainable == 6


def test_hyperparameter_without_default_needs_a_value(tiny):
    arch = architecture_from_config(tiny["llama"])
    m = fake_method(total="k_extra * d_model")
    with pytest.raises(UsageError, match="--set k_extra=VALUE"):
        count_trainable(m, arch)
    assert count_trainable(m, arch, {"k_extra": 3}).trainable == 192


def test_string_hyperparameter_in_a_formula_is_an_error(tiny):
    with pytest.raises(UsageError, match="not a number"):
        count_trainable(fake_method(total="mode * 2"), architecture_from_config(tiny["llama"]))


def test_fractional_result_is_rounded_and_marked_approximate(tiny):
    count = count_trainable(fake_method(total="d_model / 3"), architecture_from_config(tiny["llama"]))
    assert count.trainable == 21 and not count.exact


def test_method_without_formula_is_a_usage_error(tiny):
    m = NS(id="nothing", hyperparameters=[], trainable_params=None, properties=None)
    with pytest.raises(UsageError, match="no trainable-parameter formula"):
        count_trainable(m, architecture_from_config(tiny["llama"]))
