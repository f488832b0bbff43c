"""HiRA-specific promises: ΔW = W0 ⊙ (B A) without scaling, its rank beyond r, and peft's HiRA as the oracle."""
from __future__ import annotations

import pytest
import torch

from impl_cases import fresh, perturb
from peft_parity import assert_matches_peft
from reference_impls import hira
from reference_impls._core import find_targets


def _layer(d_in=12, d_out=10, r=2):
    torch.manual_seed(0)
    layer = hira.HiRALinear(torch.nn.Linear(d_in, d_out), r=r)
    with torch.no_grad():
        layer.B.normal_()
    return layer


def test_update_is_hadamard_product_of_W0_and_BA():
    layer = _layer()
    expected = layer.base.weight * (layer.B @ layer.A)
    torch.testing.assert_close(layer.delta_weight(), expected)
    x = torch.randn(3, 12)
    torch.testing.assert_close(layer(x), x @ (layer.base.weight + expected).T + layer.base.bias,
                               atol=1e-6, rtol=1e-6)


def test_update_rank_exceeds_r():
    layer = _layer(d_in=12, d_out=10, r=2)
    assert torch.linalg.matrix_rank(layer.B @ layer.A).item() == 2
    assert torch.linalg.matrix_rank(layer.delta_weight()).item() == 10  # full rank with r = 2


def test_starts_at_zero_update_and_unmerge_restores_W0():
    fresh_layer = hira.HiRALinear(torch.nn.Linear(6, 4), r=2)
    assert torch.equal(fresh_layer.delta_weight(), torch.zeros(4, 6))
    layer = _layer()
    W0 = layer.base.weight.detach().clone()
    layer.merge()
    torch.testing.assert_close(layer.base.weight, W0 * (1 + layer.B @ layer.A))
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, W0, atol=1e-6, rtol=1e-5)


def _hira_link(mine, layer):
    return [(mine.A, layer.hira_A["default"]), (mine.B, layer.hira_B["default"])]


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-t5", "tiny-llama", "tiny-gpt2"])
def test_matches_peft_hira(arch):
    peft = pytest.importorskip("peft")
    config = hira.HiRAConfig(r=4)
    ours = hira.apply(fresh(arch), config)
    perturb(ours)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.HiraConfig(r=4, target_modules=names,
                                                              fan_in_fan_out=arch == "tiny-gpt2"))
    assert_matches_peft(ours, theirs, names, _hira_link, mergeable=True)
