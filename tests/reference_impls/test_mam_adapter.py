"""MAM-adapter-specific promises: the parallel adapter reads the FFN input and adds s times its output."""
from __future__ import annotations

import copy

import torch

from impl_cases import fresh
from reference_impls import mam_adapter as mam

CONFIG = mam.MAMAdapterConfig(n_virtual_tokens=4, bottleneck=8, scaling=4.0)


def _perturbed_adapter(model, path: str) -> mam.ParallelAdapter:
    adapter = model.get_submodule(path)
    with torch.no_grad():
        adapter.adapter.up.weight.normal_()
        adapter.adapter.up.bias.normal_()
    return adapter


def _branch(a: mam.ParallelAdapter, x: torch.Tensor) -> torch.Tensor:
    """s * (W_up ReLU(W_down x + b_down) + b_up), written out: the scale multiplies b_up too (Adapter_Layer)."""
    b = a.adapter
    return 4.0 * (torch.relu(x @ b.down.weight.T + b.down.bias) @ b.up.weight.T + b.up.bias)


def test_llama_ffn_output_is_mlp_plus_scaled_adapter_of_its_input():
    base_mlp = copy.deepcopy(fresh("tiny-llama").model.layers[0].mlp)
    model = mam.apply(fresh("tiny-llama"), CONFIG)
    a = _perturbed_adapter(model, "model.layers.0.mlp.down_proj")
    x = torch.randn(2, 5, 32)
    expected = base_mlp(x) + _branch(a, x)
    torch.testing.assert_close(model.model.layers[0].mlp(x), expected, atol=1e-5, rtol=1e-5)


def test_bert_split_ffn_gets_the_adapter_before_residual_and_layernorm():
    layer = fresh("tiny-bert").bert.encoder.layer[0]
    base_inter, base_out = copy.deepcopy(layer.intermediate), copy.deepcopy(layer.output)
    model = mam.apply(fresh("tiny-bert"), CONFIG)
    a = _perturbed_adapter(model, "bert.encoder.layer.0.output.dense")
    mine = model.bert.encoder.layer[0]
    x = torch.randn(2, 5, 32)  # the attention output, input of the FFN
    h = base_out.dense(base_inter(x)) + _branch(a, x)
    expected = base_out.LayerNorm(h + x)
    torch.testing.assert_close(mine.output(mine.intermediate(x), x), expected, atol=1e-5, rtol=1e-5)


def test_adapter_does_not_keep_the_ffn_input_after_the_forward():
    model = mam.apply(fresh("tiny-llama"), CONFIG)
    model.model.layers[0].mlp(torch.randn(2, 5, 32))
    assert model.model.layers[0].mlp.down_proj.x is None
