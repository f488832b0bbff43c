"""LoHa-specific promises: ΔW = s (B1 A1) ⊙ (B2 A2), rank beyond r, the two training dropouts, and peft's
LoHa as the oracle."""
from __future__ import annotations

import pytest
import torch

from impl_cases import fresh, perturb
from peft_parity import assert_matches_peft
from reference_impls import loha
from reference_impls._core import find_targets


def _layer(d_in=8, d_out=6, r=2, alpha=4, **kw):
    torch.manual_seed(0)
    layer = loha.LoHaLinear(torch.nn.Linear(d_in, d_out), r=r, alpha=alpha, **kw)
    with torch.no_grad():
        layer.A2.normal_()
    return layer


def test_update_is_scaled_hadamard_product_of_two_low_rank_matrices():
    layer = _layer()
    expected = (4 / 2) * (layer.B1 @ layer.A1) * (layer.B2 @ layer.A2)
    torch.testing.assert_close(layer.delta_weight(), expected)
    x = torch.randn(3, 8)
    torch.testing.assert_close(layer(x), layer.base(x) + x @ expected.T, atol=1e-6, rtol=1e-6)


def test_starts_at_zero_update():
    layer = loha.LoHaLinear(torch.nn.Linear(8, 6), r=2, alpha=4)
    assert torch.equal(layer.delta_weight(), torch.zeros(6, 8))


def test_rank_of_update_exceeds_r():
    # r = 2 per factor: a LoRA update of the same r has rank <= 2, the Hadamard product reaches r² = 4
    layer = _layer(d_in=16, d_out=16, r=2)
    assert torch.linalg.matrix_rank(layer.delta_weight()).item() == 4


def test_rank_dropout_zeroes_output_rows_and_rescales_the_rest():
    layer = _layer(d_out=64, rank_dropout=0.5).train()
    x = torch.randn(5, 8)
    torch.manual_seed(3)
    out = layer(x) - layer.base(x)
    torch.manual_seed(3)
    torch.rand(())  # the module-dropout draw comes first
    keep = (torch.rand(64) > 0.5).float()
    full = x @ layer.delta_weight().T  # (5, d_out)
    torch.testing.assert_close(out, full * keep / keep.mean(), atol=1e-6, rtol=1e-6)
    assert 0 < keep.sum() < 64
    layer.eval()  # no dropout at inference
    torch.testing.assert_close(layer(x), layer.base(x) + full, atol=1e-6, rtol=1e-6)


def test_module_dropout_skips_the_whole_update_in_training_only():
    layer = _layer(module_dropout=0.99).train()
    x = torch.randn(3, 8)
    torch.manual_seed(0)  # first draw 0.496 < 0.99: skipped
    assert torch.equal(layer(x), layer.base(x))
    layer.eval()
    assert not torch.allclose(layer(x), layer.base(x))


def _loha_link(mine, layer):
    return [(mine.B1, layer.hada_w1_a["default"]), (mine.A1, layer.hada_w1_b["default"]),
            (mine.B2, layer.hada_w2_a["default"]), (mine.A2, layer.hada_w2_b["default"])]


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-t5", "tiny-llama"])
def test_matches_peft_loha(arch):
    peft = pytest.importorskip("peft")
    config = loha.LoHaConfig(r=4, alpha=8)
    ours = loha.apply(fresh(arch), config)
    perturb(ours)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.LoHaConfig(r=4, alpha=8, target_modules=names))
    assert_matches_peft(ours, theirs, names, _loha_link, mergeable=True)
