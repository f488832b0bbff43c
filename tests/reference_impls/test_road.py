"""RoAd-specific promises: output features paired within groups are rotated and scaled by their own angle
and scale (road_1, road_2, road_4), R folds into W and b; peft's RoadModel as the oracle."""
from __future__ import annotations

import math

import pytest
import torch

from impl_cases import fresh, perturb
from peft_parity import assert_matches_peft
from reference_impls import road
from reference_impls._core import count_trainable, find_targets, linear_dims


def _layer(variant="road_1", d_out=8, g=4):
    torch.manual_seed(0)
    layer = road.RoAdLinear(torch.nn.Linear(5, d_out), "x", variant, g)
    with torch.no_grad():
        layer.theta.normal_()
        layer.alpha.normal_(1.0, 0.3)
    return layer


def test_road_1_is_a_scaled_2d_rotation_of_each_pair():
    layer = _layer("road_1")  # d_out 8, groups of 4: pairs (0, 2), (1, 3), (4, 6), (5, 7)
    x = torch.randn(3, 5)
    h = layer.base(x)
    expected = torch.empty_like(h)
    for k, (i, j) in enumerate([(0, 2), (1, 3), (4, 6), (5, 7)]):
        t, a = layer.theta[k], layer.alpha[k]
        expected[:, i] = a * (math.cos(t) * h[:, i] - math.sin(t) * h[:, j])
        expected[:, j] = a * (math.sin(t) * h[:, i] + math.cos(t) * h[:, j])
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_road_4_uses_separate_angles_and_scales_for_cos_and_sin():
    layer = _layer("road_4", d_out=4, g=4)  # one group: θ = (cos angles 0..3 | sin angles 0..3), likewise α
    c, s = layer.coefficients()
    th, al = layer.theta, layer.alpha
    torch.testing.assert_close(c, al[:4] * th[:4].cos())
    torch.testing.assert_close(s, al[4:] * th[4:].sin())


@pytest.mark.parametrize("variant", ["road_1", "road_2", "road_4"])
def test_merge_folds_R_into_weight_and_bias(variant):
    layer = _layer(variant)
    x = torch.randn(3, 5)
    before = layer(x)
    W, b = layer.base.weight.detach().clone(), layer.base.bias.detach().clone()
    layer.merge()
    R = layer.rotation()
    torch.testing.assert_close(layer.base.weight, R @ W)
    torch.testing.assert_close(layer.base.bias, R @ b)
    torch.testing.assert_close(layer(x), before, atol=1e-5, rtol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, W, atol=1e-5, rtol=1e-5)


def test_counts_per_variant_and_bad_group_sizes():
    for variant, per_feature in [("road_1", 1), ("road_2", 2), ("road_4", 4)]:
        model = road.apply(fresh("tiny-llama"), road.RoAdConfig(variant=variant, group_size=8))
        layers = [m for m in model.modules() if isinstance(m, road.RoAdLinear)]
        assert count_trainable(model) == per_feature * sum(linear_dims(m.base)[1] for m in layers)
    with pytest.raises(ValueError, match="must be even and divide d_out = 8"):
        road.RoAdLinear(torch.nn.Linear(5, 8), "x", "road_1", 3)
    with pytest.raises(ValueError, match="unknown variant"):
        road.RoAdLinear(torch.nn.Linear(5, 8), "x", "road_3", 4)


def _road_link(mine, layer):
    return [(mine.theta, layer.road_theta["default"]), (mine.alpha, layer.road_alpha["default"])]


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch,variant", [("tiny-bert", "road_1"), ("tiny-t5", "road_1"), ("tiny-llama", "road_1"),
                                          ("tiny-llama", "road_2"), ("tiny-llama", "road_4")])
def test_matches_peft_road(arch, variant):  # peft's RoAd takes nn.Linear only, so not GPT-2's Conv1D
    peft = pytest.importorskip("peft")
    config = road.RoAdConfig(variant=variant, group_size=8)
    ours = road.apply(fresh(arch), config)
    perturb(ours)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.RoadConfig(variant=variant, group_size=8, target_modules=names))
    assert_matches_peft(ours, theirs, names, _road_link, mergeable=True)
