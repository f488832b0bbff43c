"""Sequential-adapter-specific promises: placement and the residual bottleneck."""
from __future__ import annotations

import torch

from impl_cases import fresh
from reference_impls import sequential_adapter as sa


def test_adapters_follow_the_attention_output_and_the_ffn_output():
    model = sa.apply(fresh("tiny-bert"), sa.SequentialAdapterConfig(bottleneck=8))
    wrapped = [n for n, m in model.named_modules() if isinstance(m, sa.SequentialAdapter)]
    assert wrapped == ["bert.encoder.layer.0.attention.output.dense", "bert.encoder.layer.0.output.dense",
                       "bert.encoder.layer.1.attention.output.dense", "bert.encoder.layer.1.output.dense"]


def test_adapter_adds_a_bottleneck_branch_to_its_input():
    layer = sa.SequentialAdapter(torch.nn.Linear(16, 16), m=4, activation="relu")
    with torch.no_grad():
        layer.adapter.up.weight.normal_()
    x = torch.randn(2, 5, 16)
    h = layer.base(x)
    a = layer.adapter
    z = torch.relu(h @ a.down.weight.T + a.down.bias)  # (2, 5, m)
    expected = h + z @ a.up.weight.T + a.up.bias       # (2, 5, 16)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_zero_up_projection_makes_each_adapter_the_identity():
    layer = sa.SequentialAdapter(torch.nn.Linear(16, 16), m=4, activation="relu")
    x = torch.randn(2, 5, 16)
    assert torch.equal(layer(x), layer.base(x))
