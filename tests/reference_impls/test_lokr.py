"""LoKr-specific promises: ΔW = (alpha / r) W1 ⊗ W2 with LyCORIS's factorisation and size rule, the two training
dropouts, and peft's LoKr as the oracle on tiny Llama, BERT and T5 (peft's LoKr refuses GPT-2's Conv1D, and so
does ours)."""
from __future__ import annotations

import pytest
import torch

from impl_cases import fresh, perturb
from peft_parity import assert_matches_peft
from reference_impls import lokr
from reference_impls._core import find_targets


def _layer(d_in=12, d_out=8, r=1, alpha=3, **kw):
    torch.manual_seed(0)
    layer = lokr.LoKrLinear(torch.nn.Linear(d_in, d_out), r=r, alpha=alpha, **kw)
    with torch.no_grad():
        for p in layer.w1:
            p.normal_()
    return layer


def test_update_is_scaled_kronecker_product_with_lycoris_shapes():
    # 8 = 2 x 4 and 12 = 3 x 4: W1 is 2 x 3; W2 is 4 x 4, stored as 4 x 1 @ 1 x 4 since 2r = 2 < 4
    layer = _layer()
    assert [tuple(p.shape) for p in layer.w1] == [(2, 3)]
    assert [tuple(p.shape) for p in layer.w2] == [(4, 1), (1, 4)]
    w1, w2 = layer.w1[0], layer.w2[0] @ layer.w2[1]
    expected = torch.zeros(8, 12)
    for i in range(2):          # block (i, j) of W1 ⊗ W2 is W1[i, j] · W2, explicitly
        for j in range(3):
            expected[4 * i:4 * i + 4, 4 * j:4 * j + 4] = w1[i, j] * w2
    expected *= 3 / 1
    torch.testing.assert_close(layer.delta_weight(), expected)
    x = torch.randn(5, 12)
    torch.testing.assert_close(layer(x), layer.base(x) + x @ expected.T, atol=1e-6, rtol=1e-6)


def test_rank_of_update_is_product_of_factor_ranks():
    # rank(W1 ⊗ W2) = rank(W1) rank(W2): 2 x 3 of rank 2 times a rank-1 W2 gives rank 2; a full 4 x 4 W2 gives 8
    assert torch.linalg.matrix_rank(_layer().delta_weight()).item() == 2
    assert torch.linalg.matrix_rank(_layer(r=2).delta_weight()).item() == 8


@pytest.mark.parametrize("kw, w1, w2", [
    ({"r": 1}, [(2, 3)], [(4, 1), (1, 4)]),
    ({"r": 2}, [(2, 3)], [(4, 4)]),                                   # 2r = 4 is not < max(4, 4): full
    ({"r": 1, "decompose_both": True}, [(2, 1), (1, 3)], [(4, 1), (1, 4)]),
    ({"r": 2, "decompose_both": True}, [(2, 3)], [(4, 4)]),
    ({"r": 1, "decompose_factor": 4}, [(4, 4)], [(2, 1), (1, 3)]),   # 4 divides both: (4, 2) and (4, 3)
])
def test_storage_follows_the_size_rule(kw, w1, w2):
    layer = _layer(**kw)
    assert [tuple(p.shape) for p in layer.w1] == w1 and [tuple(p.shape) for p in layer.w2] == w2


def test_starts_at_zero_update():
    for both in (False, True):
        layer = lokr.LoKrLinear(torch.nn.Linear(32, 16), r=1, alpha=2, decompose_both=both)
        assert torch.equal(layer.delta_weight(), torch.zeros(16, 32))
        assert layer.delta_weight().shape == (16, 32)


def test_rank_dropout_zeroes_output_rows_without_rescaling():
    layer = _layer(d_out=64, d_in=8, rank_dropout=0.5).train()
    x = torch.randn(5, 8)
    torch.manual_seed(3)
    out = layer(x) - layer.base(x)
    torch.manual_seed(3)
    torch.rand(())  # the module-dropout draw comes first
    keep = (torch.rand(64) > 0.5).float()
    torch.testing.assert_close(out, (x @ layer.delta_weight().T) * keep, atol=1e-6, rtol=1e-6)
    assert 0 < keep.sum() < 64


def test_module_dropout_skips_the_whole_update_in_training_only():
    layer = _layer(module_dropout=0.99).train()
    x = torch.randn(3, 12)
    torch.manual_seed(0)
    assert torch.equal(layer(x), layer.base(x))
    layer.eval()
    assert not torch.allclose(layer(x), layer.base(x))


def test_refuses_gpt2_conv1d_as_peft_does():
    from transformers.pytorch_utils import Conv1D

    with pytest.raises(NotImplementedError, match="nn.Linear"):
        lokr.LoKrLinear(Conv1D(8, 4), r=1, alpha=1)


def _lokr_link(mine, layer):
    w1 = ["lokr_w1"] if len(mine.w1) == 1 else ["lokr_w1_a", "lokr_w1_b"]
    w2 = ["lokr_w2"] if len(mine.w2) == 1 else ["lokr_w2_a", "lokr_w2_b"]
    return ([(p, getattr(layer, n)["default"]) for p, n in zip(mine.w1, w1)]
            + [(p, getattr(layer, n)["default"]) for p, n in zip(mine.w2, w2)])


@pytest.mark.peft_oracle
@pytest.mark.parametrize("settings", [dict(r=1, alpha=2, decompose_both=True), dict(r=4, alpha=8),
                                      dict(r=1, alpha=3, decompose_factor=2)])
@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-t5", "tiny-llama"])
def test_matches_peft_lokr(arch, settings):
    peft = pytest.importorskip("peft")
    from impl_cases import formula_count

    config = lokr.LoKrConfig(**settings)
    ours = lokr.apply(fresh(arch), config)
    perturb(ours)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.LoKrConfig(target_modules=names, **settings))
    assert theirs.get_nb_trainable_parameters()[0] == formula_count("lokr", fresh(arch), config)
    assert_matches_peft(ours, theirs, names, _lokr_link, mergeable=True)
