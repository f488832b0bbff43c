"""Parallel-adapter-specific promises: the adapter reads the FFN input and adds s times its output."""
from __future__ import annotations

import copy

import torch

from impl_cases import fresh
from reference_impls import parallel_adapter as pa
from reference_impls.mam_adapter import ParallelAdapter

CONFIG = pa.ParallelAdapterConfig(bottleneck=8, scaling=4.0)


def _perturbed(adapter: ParallelAdapter) -> ParallelAdapter:
    with torch.no_grad():
        adapter.adapter.up.weight.normal_()
        adapter.adapter.up.bias.normal_()
    return adapter


def test_one_adapter_per_ffn_and_nothing_on_attention():
    model = pa.apply(fresh("tiny-t5"), CONFIG)
    wrapped = [n for n, m in model.named_modules() if isinstance(m, ParallelAdapter)]
    assert wrapped == [f"{s}.block.{i}.layer.{j}.DenseReluDense.wo"
                       for s, j in (("encoder", 1), ("decoder", 2)) for i in (0, 1)]


def test_llama_ffn_output_is_mlp_plus_scaled_adapter_of_its_input():
    base_mlp = copy.deepcopy(fresh("tiny-llama").model.layers[1].mlp)
    model = pa.apply(fresh("tiny-llama"), CONFIG)
    a = _perturbed(model.model.layers[1].mlp.down_proj)
    x = torch.randn(2, 5, 32)
    b = a.adapter  # s · (ReLU(x W_down + b_down) W_up + b_up), written out
    expected = base_mlp(x) + 4.0 * (torch.relu(x @ b.down.weight.T + b.down.bias) @ b.up.weight.T + b.up.bias)
    torch.testing.assert_close(model.model.layers[1].mlp(x), expected, atol=1e-5, rtol=1e-5)


def test_t5_ffn_adapter_reads_the_normed_ffn_input_and_scale_s_multiplies_the_branch():
    base_ff = copy.deepcopy(fresh("tiny-t5").encoder.block[0].layer[1])
    outs = []
    for s in (1.0, 3.0):
        torch.manual_seed(0)  # same adapter weights and input for both scales
        model = pa.apply(fresh("tiny-t5"), pa.ParallelAdapterConfig(bottleneck=8, scaling=s))
        ff = model.encoder.block[0].layer[1]
        a = _perturbed(ff.DenseReluDense.wo)
        x = torch.randn(2, 5, 32)
        y = ff.layer_norm(x)  # T5 feeds the FFN its pre-normed input
        torch.testing.assert_close(ff(x), x + base_ff.DenseReluDense(y) + s * a.adapter(y), atol=1e-5, rtol=1e-5)
        outs.append(ff(x) - base_ff(x))
    torch.testing.assert_close(outs[1], 3.0 * outs[0], atol=1e-5, rtol=1e-5)
