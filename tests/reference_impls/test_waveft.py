"""WaveFT-specific promises: ΔW is the scaled inverse Haar transform of sparse trained coefficients (checked
against a direct Haar synthesis and peft's waverec2d); peft's WaveFTModel as the oracle."""
from __future__ import annotations

import math

import pytest
import torch

from impl_cases import fresh, perturb
from peft_parity import assert_matches_peft
from reference_impls import waveft
from reference_impls._core import find_targets


def test_inverse_is_the_haar_synthesis():
    """Each coefficient adds an outer product of the Haar synthesis filters to its 2 x 2 block of the output:
    cA lo⊗lo, cH (top right) hi⊗lo (high along rows), cV (bottom left) lo⊗hi, cD hi⊗hi."""
    C = torch.randn(4, 6)
    s = 1 / math.sqrt(2)
    lo, hi = torch.tensor([s, s]), torch.tensor([s, -s])
    X = torch.zeros(4, 6)
    for i in range(2):
        for j in range(3):
            X[2 * i:2 * i + 2, 2 * j:2 * j + 2] = (C[i, j] * torch.outer(lo, lo) + C[i, j + 3] * torch.outer(hi, lo)
                                                   + C[i + 2, j] * torch.outer(lo, hi)
                                                   + C[i + 2, j + 3] * torch.outer(hi, hi))
    torch.testing.assert_close(waveft.haar_inverse_2d(C), X, atol=1e-6, rtol=0)


def test_matches_peft_waverec2d_for_db1():
    pytest.importorskip("peft")
    from peft.tuners.waveft.waverec2d import waverec2d

    C = torch.randn(6, 10)
    expected = waverec2d((C[:3, :5], (C[:3, 5:], C[3:, :5], C[3:, 5:])), "db1")
    torch.testing.assert_close(waveft.haar_inverse_2d(C), expected, atol=1e-6, rtol=0)


def test_update_is_scaled_inverse_of_the_sparse_coefficients_and_odd_sizes_are_cropped():
    layer = waveft.WaveFTLinear(torch.nn.Linear(5, 7), "x", waveft.WaveFTConfig(n_frequency=9, scaling=2.0))
    with torch.no_grad():
        layer.coefficients.normal_()
    C = torch.zeros(8, 6)  # padded to even sizes
    C[layer.index // 5, layer.index % 5] = layer.coefficients
    expected = 2.0 * waveft.haar_inverse_2d(C)[:7, :5]
    torch.testing.assert_close(layer.delta_weight(), expected)
    assert torch.linalg.matrix_rank(layer.delta_weight()) > 1
    x = torch.randn(3, 5)
    torch.testing.assert_close(layer(x), layer.base(x) + x @ expected.T, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="'db2' is not implemented"):
        waveft.WaveFTLinear(torch.nn.Linear(5, 7), "x", waveft.WaveFTConfig(n_frequency=9, wavelet_family="db2"))


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch,idwt", [("tiny-bert", True), ("tiny-t5", True), ("tiny-llama", True),
                                       ("tiny-llama", False)])
def test_matches_peft_waveft(arch, idwt):
    peft = pytest.importorskip("peft")
    config = waveft.WaveFTConfig(n_frequency=64, use_idwt=idwt)
    ours = waveft.apply(fresh(arch), config)
    perturb(ours, std=0.01)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.WaveFTConfig(n_frequency=64, use_idwt=idwt, target_modules=names))
    inner = theirs.base_model.model
    for name in names:  # the same positions
        rows, cols = inner.get_submodule(name).waveft_indices["default"]
        mine = ours.get_submodule(name)
        assert torch.equal(rows * mine.d_in + cols, mine.index)
    link = lambda m, layer: [(m.coefficients, layer.waveft_spectrum["default"])]  # noqa: E731
    assert_matches_peft(ours, theirs, names, link, mergeable=True)
