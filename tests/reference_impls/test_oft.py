"""OFT-specific promises: the input is rotated block by block by Cayley(Q) with skew-symmetric Q, which equals
the merged weight W0 Rᵀ; the Neumann series approaches the exact (orthogonal) Cayley transform; COFT keeps Q
in its ball; peft's OFTModel as the oracle."""
from __future__ import annotations

import pytest
import torch

from impl_cases import fresh, perturb
from peft_parity import assert_matches_peft
from reference_impls import oft
from reference_impls._core import count_trainable, find_targets, linear_dims


def _layer(d_in=12, d_out=5, **kw):
    torch.manual_seed(0)
    layer = oft.OFTLinear(torch.nn.Linear(d_in, d_out), "x", oft.OFTConfig(**{"block_size": 4, **kw}))
    with torch.no_grad():
        layer.Q.normal_(std=0.1)
    return layer


def test_forward_rotates_each_neuron_by_the_block_diagonal_cayley_matrix():
    layer = _layer(use_cayley_neumann=False)
    Q = torch.zeros(3, 4, 4)
    rows, cols = torch.triu_indices(4, 4, 1)
    Q[:, rows, cols] = layer.Q.detach()
    Q = Q - Q.transpose(1, 2)
    I = torch.eye(4)  # noqa: E741
    R = torch.block_diag(*[(I - q) @ torch.linalg.inv(I + q) for q in Q])  # (12, 12)
    torch.testing.assert_close(R @ R.T, torch.eye(12), atol=1e-5, rtol=0)  # orthogonal
    x = torch.randn(2, 3, 12)
    expected = x @ (layer.base.weight @ R.T).T + layer.base.bias  # W = W0 Rᵀ
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_neumann_series_is_peft_truncation_and_tends_to_cayley():
    Q = oft.skew(torch.randn(2, 6) * 0.05, 4)
    I = torch.eye(4).expand(2, 4, 4)  # noqa: E741
    five = I + 2 * Q + 2 * Q @ Q + 2 * Q @ Q @ Q + Q @ Q @ Q @ Q
    torch.testing.assert_close(oft.cayley(Q, True, 5), five)
    exact = (I + Q) @ torch.linalg.inv(I - Q)  # the series' limit; peft's exact branch gives its transpose
    torch.testing.assert_close(oft.cayley(Q, True, 12), exact, atol=1e-6, rtol=0)
    torch.testing.assert_close(oft.cayley(Q, False, 5), exact.transpose(1, 2), atol=1e-6, rtol=0)


def test_coft_keeps_each_block_within_eps():
    layer = _layer(coft=True, eps=1e-3)
    layer.blocks()
    norms = oft.skew(layer.Q.detach(), 4).norm(dim=(1, 2))
    assert torch.all(norms <= 1e-3 / 3 ** 0.5 + 1e-7)


def test_block_share_trains_one_block_per_module():
    layer = _layer(block_share=True)
    assert layer.Q.shape == (1, 6)
    R = layer.blocks()
    assert R.shape == (3, 4, 4) and torch.equal(R[0], R[2])


def test_block_size_must_divide_d_in_and_r_or_block_size_not_both():
    with pytest.raises(ValueError, match="does not divide d_in = 12"):
        oft.OFTLinear(torch.nn.Linear(12, 5), "x", oft.OFTConfig(block_size=5))
    with pytest.raises(ValueError, match="not both"):
        oft.OFTLinear(torch.nn.Linear(12, 5), "x", oft.OFTConfig(block_size=4, r=3))
    assert oft.OFTLinear(torch.nn.Linear(12, 5), "x", oft.OFTConfig(block_size=0, r=3)).b == 4


def test_count_is_d_in_times_b_minus_one_over_two():
    model = oft.apply(fresh("tiny-llama"), oft.OFTConfig(block_size=8))
    layers = [m for m in model.modules() if isinstance(m, oft.OFTLinear)]
    assert count_trainable(model) == sum(linear_dims(m.base)[0] * 7 // 2 for m in layers) == 4 * 32 * 7 // 2


def _oft_link(mine, layer):
    return [(mine.Q, layer.oft_R["default"].weight)]


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch,neumann", [("tiny-bert", True), ("tiny-t5", True), ("tiny-llama", True),
                                          ("tiny-llama", False)])  # peft's OFT refuses GPT-2's Conv1D
def test_matches_peft_oft(arch, neumann):
    peft = pytest.importorskip("peft")
    config = oft.OFTConfig(block_size=8, use_cayley_neumann=neumann)
    ours = oft.apply(fresh(arch), config)
    perturb(ours)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.OFTConfig(
        r=0, oft_block_size=8, use_cayley_neumann=neumann, target_modules=names))
    assert_matches_peft(ours, theirs, names, _oft_link, mergeable=True)
