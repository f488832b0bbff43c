"""MiSS-specific promises: the summed input shards go through one shared D, which equals tiling Dᵀ along
the input of W (with a partial last shard); the mini and Block-Affine variants; peft's MissModel as the oracle."""
from __future__ import annotations

import pytest
import torch

from impl_cases import fresh, perturb
from peft_parity import assert_matches_peft
from reference_impls import miss
from reference_impls._core import find_targets


def _layer(d_in=10, d_out=6, r=4, **kw):
    torch.manual_seed(0)
    layer = miss.MiSSLinear(torch.nn.Linear(d_in, d_out), "x", r, **kw)
    with torch.no_grad():
        layer.D.normal_()
    return layer


def test_update_is_D_transposed_tiled_along_the_input_with_a_partial_last_shard():
    layer = _layer()  # d_in = 10 = 4 + 4 + 2
    Dt = layer.D.T  # (6, 4)
    delta = torch.cat([Dt, Dt, Dt[:, :2]], dim=1)  # (6, 10)
    x = torch.randn(2, 3, 10)
    torch.testing.assert_close(layer(x), layer.base(x) + x @ delta.T, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.delta_weight(), delta)


def test_mini_repeats_its_columns_along_the_output():
    layer = _layer(d_in=8, d_out=6, r=4, init="mini", mini_r=2)
    assert layer.D.shape == (4, 2)
    D_full = layer.D.repeat(1, 3)  # (4, 6)
    torch.testing.assert_close(layer.delta_weight(), torch.cat([D_full.T, D_full.T], dim=1))


def test_bat_transforms_each_block_of_W_by_its_row_block_of_D():
    layer = _layer(d_in=8, d_out=4, r=2, init="bat")
    W = layer.base.weight.detach()
    expected = W.clone()
    for i in range(2):          # output blocks
        for j in range(4):      # input blocks
            Wij = W[2 * i:2 * i + 2, 2 * j:2 * j + 2]
            expected[2 * i:2 * i + 2, 2 * j:2 * j + 2] = Wij + Wij @ layer.D[i] + layer.D[i]
    x = torch.randn(3, 8)
    torch.testing.assert_close(layer(x), x @ expected.T + layer.base.bias, atol=1e-5, rtol=1e-5)
    layer.merge()
    torch.testing.assert_close(layer.base.weight, expected, atol=1e-5, rtol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, W, atol=1e-5, rtol=1e-5)


def test_shapes_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match="r=11 must lie in 1..d_in = 10"):
        miss.MiSSLinear(torch.nn.Linear(10, 6), "x", 11)
    with pytest.raises(ValueError, match="bat: r=4 must divide"):
        miss.MiSSLinear(torch.nn.Linear(10, 8), "x", 4, init="bat")
    with pytest.raises(ValueError, match="unknown init"):
        miss.MiSSLinear(torch.nn.Linear(10, 8), "x", 4, init="nope")


def _miss_link(mine, layer):
    return [(mine.D, layer.miss_block["default"])]


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch,init", [("tiny-bert", "balance"), ("tiny-t5", "balance"), ("tiny-llama", "balance"),
                                       ("tiny-llama", "mini"), ("tiny-llama", "bat"), ("tiny-bert", "bat")])
def test_matches_peft_miss(arch, init):
    peft = pytest.importorskip("peft")
    config = miss.MiSSConfig(r=4, init=init, mini_r=2)
    ours = miss.apply(fresh(arch), config)
    perturb(ours)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.MissConfig(
        r=4, mini_r=2, init_weights={"balance": True}.get(init, init), target_modules=names))
    assert_matches_peft(ours, theirs, names, _miss_link, mergeable=True)
