"""_core: targeting by role and name, dimensions of Linear vs Conv1D, architecture symbols."""
from __future__ import annotations

import pytest
import torch

from impl_cases import fresh
from reference_impls._core import arch_symbols, find_targets, linear_dims, linear_weight, matches


def test_pattern_matches_whole_name_components_only():
    assert matches("model.layers.0.self_attn.q_proj", "q_proj")
    assert matches("model.layers.0.self_attn.q_proj", "self_attn.q_proj")
    assert not matches("model.layers.0.self_attn.xq_proj", "q_proj")
    assert matches("bert.encoder.layer.3.output.dense", "layer.*.output.dense")
    assert not matches("bert.encoder.layer.3.attention.output.dense", "layer.*.output.dense")


def test_bert_down_role_is_ffn_output_not_attention_output():
    names = [t.name for t in find_targets(fresh("tiny-bert"), ["down"])]
    assert names == ["bert.encoder.layer.0.output.dense", "bert.encoder.layer.1.output.dense"]
    o_names = [t.name for t in find_targets(fresh("tiny-bert"), ["o"])]
    assert o_names == ["bert.encoder.layer.0.attention.output.dense", "bert.encoder.layer.1.attention.output.dense"]


@pytest.mark.parametrize("arch,role,suffix", [
    ("tiny-t5", "gate", "DenseReluDense.wi_0"), ("tiny-t5", "up", "DenseReluDense.wi_1"),
    ("tiny-t5", "k", "SelfAttention.k"), ("tiny-llama", "gate", "mlp.gate_proj"),
    ("tiny-gpt2", "up", "mlp.c_fc"), ("tiny-gpt2", "down", "mlp.c_proj"), ("tiny-gpt2", "o", "attn.c_proj"),
])
def test_roles_resolve_per_family(arch, role, suffix):
    targets = find_targets(fresh(arch), [role])
    assert targets and all(t.name.endswith(suffix) for t in targets)


def test_t5_roles_skip_cross_attention_unless_named():
    model = fresh("tiny-t5")
    assert not any("EncDecAttention" in t.name for t in find_targets(model, ["k", "v"]))
    assert len(find_targets(model, ["EncDecAttention.k"])) == 2  # one per decoder block


def test_gpt2_fused_qkv_roles_cover_their_thirds():
    model = fresh("tiny-gpt2")
    d = model.config.n_embd
    (t, *_), = [find_targets(model, ["k", "v"])]
    assert t.name.endswith("attn.c_attn") and t.out_features == slice(d, 3 * d)
    assert find_targets(model, ["q"])[0].out_features == slice(0, d)


def test_conv1d_dims_and_weight_view_are_transposed():
    model = fresh("tiny-gpt2")
    c_fc = model.transformer.h[0].mlp.c_fc  # Conv1D, weight (d_in, d_out)
    assert linear_dims(c_fc) == (32, 128)
    assert linear_weight(c_fc).shape == (128, 32)
    x = torch.randn(2, 32)
    torch.testing.assert_close(c_fc(x), x @ linear_weight(c_fc).T + c_fc.bias, atol=1e-6, rtol=1e-6)


def test_unknown_target_is_an_error():
    with pytest.raises(ValueError, match="no module"):
        find_targets(fresh("tiny-llama"), ["nonexistent_proj"])


@pytest.mark.parametrize("arch,expected", [
    ("tiny-bert", dict(n_layers=2, d_model=32, d_ff=64, n_heads=4, d_head=8, n_kv_heads=4)),
    ("tiny-t5", dict(n_layers=4, d_model=32, d_ff=64, n_heads=4, d_head=8, n_kv_heads=4)),
    ("tiny-llama", dict(n_layers=2, d_model=32, d_ff=64, n_heads=4, d_head=8, n_kv_heads=2)),
    ("tiny-gpt2", dict(n_layers=2, d_model=32, d_ff=128, n_heads=4, d_head=8, n_kv_heads=4)),
])
def test_arch_symbols(arch, expected):
    assert arch_symbols(fresh(arch).config) == {**expected, "vocab_size": 100}
