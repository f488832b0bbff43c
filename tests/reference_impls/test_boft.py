"""BOFT-specific promises: Cayley blocks are orthogonal, the butterfly permutations interleave the blocks so
that log2(D) + 1 factors give a dense rotation, the output scale leaves the bias alone, multiplicative
dropout; peft's BOFT as the oracle with one factor (its CPU path) and with two (block_diag standing in for
its CUDA kernel)."""
from __future__ import annotations

import pytest
import torch

from impl_cases import fresh, perturb
from peft_parity import assert_matches_peft
from reference_impls import boft
from reference_impls._core import find_targets


def _layer(d_in=16, d_out=6, b=4, m=1, **kw):
    torch.manual_seed(0)
    layer = boft.BOFTLinear(torch.nn.Linear(d_in, d_out), block_size=b, block_num=0, n_butterfly_factor=m, **kw)
    with torch.no_grad():
        layer.R.normal_(std=0.3)
        layer.s.normal_(1.0, 0.1)
    return layer


def test_cayley_blocks_are_orthogonal_and_equal_the_explicit_formula():
    R = torch.randn(3, 4, 4)
    S = (R - R.transpose(1, 2)) / 2
    expected = (torch.eye(4) - S) @ torch.linalg.inv(torch.eye(4) + S)
    Q = boft.cayley(R)
    torch.testing.assert_close(Q, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(Q @ Q.transpose(1, 2), torch.eye(4).expand(3, 4, 4), atol=1e-5, rtol=0)


def test_butterfly_permutation_interleaves_half_blocks():
    # groups of 8 in pieces of 2: pieces 0,1,2,3 -> 0,2,1,3
    assert boft.butterfly_permutation(16, 8, 2).tolist() == [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]


def test_forward_is_scaled_rotated_weight_plus_unscaled_bias():
    layer = _layer(m=2)
    M = layer.rotation()
    torch.testing.assert_close(M @ M.T, torch.eye(16), atol=1e-5, rtol=0)
    W, b = layer.base.weight, layer.base.bias
    x = torch.randn(3, 16)
    expected = x @ (layer.s[:, None] * W @ M.T).T + b
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_one_factor_is_block_diagonal_and_log2_D_plus_one_factors_are_dense():
    one = _layer(d_in=16, b=4, m=1).rotation()
    assert (one.abs() > 1e-6).sum() == 4 * 16  # D = 4 blocks of 4 x 4
    full = _layer(d_in=16, b=4, m=3).rotation()  # log2(4) + 1 = 3
    assert (full.abs() > 1e-6).all()


def test_bad_tiling_is_an_error():
    with pytest.raises(ValueError, match="tile"):
        boft.BOFTLinear(torch.nn.Linear(12, 4), block_size=4, block_num=0, n_butterfly_factor=2)
    with pytest.raises(ValueError, match="exactly one"):
        boft.BOFTLinear(torch.nn.Linear(12, 4), block_size=4, block_num=3, n_butterfly_factor=1)


def test_multiplicative_dropout_sets_blocks_to_identity_in_training_only():
    layer = _layer(d_in=16, b=4, m=1, dropout=0.5).train()
    torch.manual_seed(1)
    Q = layer.blocks()
    is_eye = [torch.equal(q, torch.eye(4)) for q in Q[0]]
    assert sum(is_eye) == 2  # floor(0.5 * 4) blocks
    layer.eval()
    assert not any(torch.equal(q, torch.eye(4)) for q in layer.blocks()[0])


def _boft_link(mine, layer):
    return [(mine.R, layer.boft_R["default"]), (mine.s, layer.boft_s["default"], lambda t: t.view(-1))]


class _BlockDiag:
    """What peft's CUDA kernel computes, (N, D, b, b) -> (N, D b, D b), for running its m > 1 path on CPU."""

    @staticmethod
    def apply(blocks):
        return torch.stack([torch.block_diag(*factor) for factor in blocks])


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch,m", [("tiny-bert", 1), ("tiny-t5", 1), ("tiny-llama", 1), ("tiny-llama", 2)])
def test_matches_peft_boft(arch, m, monkeypatch):
    peft = pytest.importorskip("peft")
    from peft.tuners.boft import layer as peft_boft

    if m > 1:
        monkeypatch.setattr(peft_boft, "get_fbd_cuda", lambda: True)
        monkeypatch.setattr(peft_boft, "FastBlockDiag", _BlockDiag)
    config = boft.BOFTConfig(block_size=4, n_butterfly_factor=m)
    ours = boft.apply(fresh(arch), config)
    perturb(ours)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.BOFTConfig(boft_block_size=4, boft_n_butterfly_factor=m,
                                                              target_modules=names))
    assert theirs.base_model.model.get_submodule(names[0]).boft_R["default"].shape[0] == m
    assert_matches_peft(ours, theirs, names, _boft_link, mergeable=True)
