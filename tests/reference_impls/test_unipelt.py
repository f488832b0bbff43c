"""UniPELT-specific promises: each of LoRA, prefix and adapter is scaled by its own sigmoid gate."""
from __future__ import annotations

import copy

import torch

from impl_cases import batch_for, fresh, logits
from reference_impls import unipelt as up
from reference_impls._core import count_trainable

CONFIG = up.UniPELTConfig(r=4, n_virtual_tokens=4, reduction_factor=4)


def _set_gate(gate: up.Gate, value: float | None = None, bias: float | None = None) -> None:
    """Make a gate constant: weight 0 and bias = logit(value) (or the given bias)."""
    with torch.no_grad():
        gate.linear.weight.zero_()
        gate.linear.bias.fill_(bias if bias is not None else torch.logit(torch.tensor(value)).item())


def test_lora_update_is_scaled_by_its_own_gate_averaged_over_tokens_in_place_of_alpha_over_r():
    """The paper / authors' code: G_L = mean_t σ(W_G x_t + b_G), h = W_0 x + G_L B A x (no alpha / r)."""
    layer = up.GatedLoRALinear(torch.nn.Linear(16, 12), r=4, alpha=8)
    with torch.no_grad():
        layer.B.normal_()
    x = torch.randn(2, 5, 16)
    gate = layer.gate.linear
    G = torch.sigmoid(x @ gate.weight.T + gate.bias).mean(dim=1, keepdim=True)  # (2, 1, 1), per sequence
    expected = layer.base(x) + G * (x @ layer.A.T @ layer.B.T)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    assert not callable(getattr(layer, "merge", None))  # input-dependent gate: nothing to merge
    # the earlier variant, kept as gating="token": a per-token gate times alpha / r
    token = up.GatedLoRALinear(torch.nn.Linear(16, 12), r=4, alpha=8, gating="token")
    with torch.no_grad():
        token.B.normal_()
    g = token.gate.linear
    G = torch.sigmoid(x @ g.weight.T + g.bias)  # (2, 5, 1)
    torch.testing.assert_close(token(x), token.base(x) + G * (x @ token.A.T @ token.B.T) * 2.0, atol=1e-5, rtol=1e-5)


def test_q_and_v_have_separate_lora_gates():
    model = up.apply(fresh("tiny-bert"), CONFIG)
    attn = model.get_submodule("bert.encoder.layer.0.attention.self")
    assert attn.query.gate is not attn.value.gate
    assert attn.query.gate.linear.weight.data_ptr() != attn.value.gate.linear.weight.data_ptr()


def test_adapter_output_is_ffn_output_plus_gated_adapter_of_it():
    layer = up.GatedAdapter(torch.nn.Linear(24, 16), m=4)
    with torch.no_grad():
        layer.adapter.up.weight.normal_()
    z = torch.randn(2, 5, 24)
    h = layer.base(z)
    G = torch.sigmoid(layer.gate.linear(h)).mean(dim=1, keepdim=True)  # (2, 1, 1): averaged over tokens
    torch.testing.assert_close(layer(z), h + G * layer.adapter(h), atol=1e-5, rtol=1e-5)


def test_prefix_gate_scales_the_prefix_keys_and_values_of_its_layer():
    for arch in ("tiny-bert", "tiny-llama"):
        torch.manual_seed(0)
        model = up.apply(fresh(arch), CONFIG)
        enc = model.prefix_encoder
        for g in enc.gates:
            _set_gate(g, 0.3)  # G_P = 0.3 in every layer
        batch = batch_for(model)
        gated = logits(model, batch)
        # the same model with the prefix multiplied by 0.3 and G_P = 1 exactly (sigmoid(50) == 1.0 in float32)
        other = copy.deepcopy(model)
        for g in other.prefix_encoder.gates:
            _set_gate(g, bias=50.0)
        with torch.no_grad():
            other.prefix_encoder.prefix.mul_(0.3)
        torch.testing.assert_close(logits(other, batch), gated, atol=1e-5, rtol=1e-5)
        # and the gate matters: G_P = 1 on the unscaled prefix gives another output
        for g in enc.gates:
            _set_gate(g, bias=50.0)
        assert (logits(model, batch) - gated).abs().max() > 1e-2
        assert enc.g == {}  # the per-forward gate values are consumed, not kept


def test_every_block_has_four_gates_and_the_count_adds_the_three_methods():
    model = up.apply(fresh("tiny-llama"), CONFIG)
    gates = [n for n, m in model.named_modules() if isinstance(m, up.Gate)]
    assert len(gates) == 4 * 2  # G_Lq, G_Lv, G_P, G_A per block
    d, m, r, P, n_kv, hs, L = 32, 8, 4, 4, 2, 8, 2
    lora = L * r * ((d + d) + (d + n_kv * hs))  # W_q: 32 -> 32, W_v: 32 -> 16 (grouped-query attention)
    lora_gates = L * 2 * (d + 1)                # one d_in -> 1 gate per adapted projection
    adapter = L * (2 * d * m + m + d)
    prefix = L * 2 * P * n_kv * hs
    assert count_trainable(model) == lora + lora_gates + adapter + prefix + 2 * L * (d + 1)


def test_closed_gates_silence_lora_and_adapter():
    model = up.apply(fresh("tiny-bert"), CONFIG)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, up.GatedLoRALinear):
                m.B.normal_()
            if isinstance(m, up.GatedAdapter):
                m.adapter.up.weight.normal_()
    batch = batch_for(model)
    open_ = logits(model, batch)
    reference = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, up.Gate) and m not in set(model.prefix_encoder.gates):
            _set_gate(m, bias=-200.0)  # sigmoid(-200) == 0 in float32
    with torch.no_grad():  # the reference: LoRA's B and the adapters' W_up back at zero
        for m in reference.modules():
            if isinstance(m, up.GatedLoRALinear):
                m.B.zero_()
            if isinstance(m, up.GatedAdapter):
                m.adapter.up.weight.zero_()
    closed = logits(model, batch)
    torch.testing.assert_close(closed, logits(reference, batch), atol=1e-5, rtol=1e-5)
    assert (closed - open_).abs().max() > 1e-2


def test_prefix_trained_through_the_mlp_keeps_its_outputs_when_the_mlp_is_dropped():
    from reference_impls.prefix_tuning import drop_projection

    config = up.UniPELTConfig(r=4, n_virtual_tokens=4, reduction_factor=4, prefix_projection=True, projection_hidden=8)
    model = up.apply(fresh("tiny-llama"), config)
    batch = batch_for(model)
    before = logits(model, batch)
    n_before = count_trainable(model)
    drop_projection(model)
    torch.testing.assert_close(logits(model, batch), before, atol=1e-5, rtol=1e-5)
    assert count_trainable(model) == count_trainable(up.apply(fresh("tiny-llama"), CONFIG)) < n_before
