"""FourierFT-specific promises: ΔW is the scaled real inverse DFT of a sparse spectrum (pinned against the
explicit cosine sum), the positions come from the seed, and peft's FourierFT is the oracle."""
from __future__ import annotations

import math

import pytest
import torch

from impl_cases import fresh, perturb, prepare
from peft_parity import assert_matches_peft
from reference_impls import fourierft
from reference_impls._core import find_targets


def test_update_is_the_scaled_real_inverse_dft_of_the_sparse_spectrum():
    torch.manual_seed(0)
    layer = fourierft.FourierFTLinear(torch.nn.Linear(6, 4), n_frequency=5, scaling=3.0, seed=1, init_zero=False)
    M, N = 4, 6
    p = torch.arange(M)[:, None].double()
    q = torch.arange(N)[None, :].double()
    expected = torch.zeros(M, N, dtype=torch.float64)
    for (u, v), c in zip(layer.positions.T.tolist(), layer.c.double()):
        # Re(e^{2πi(up/M + vq/N)}) for a real coefficient
        expected += c * torch.cos(2 * math.pi * (u * p / M + v * q / N))
    expected *= 3.0 / (M * N)
    torch.testing.assert_close(layer.delta_weight().double(), expected, atol=1e-6, rtol=1e-6)
    x = torch.randn(2, 6)
    torch.testing.assert_close(layer(x), layer.base(x) + x @ layer.delta_weight().T)


def test_positions_are_distinct_come_from_the_seed_and_are_shared_by_modules_of_one_shape():
    _, model, _ = prepare("fourierft", "tiny-llama")
    layers = [m for m in model.modules() if isinstance(m, fourierft.FourierFTLinear)]
    by_shape = {}
    for m in layers:
        flat = m.positions[0] * m.shape[1] + m.positions[1]
        assert len(set(flat.tolist())) == m.c.numel()
        by_shape.setdefault(m.shape, []).append(m.positions)
    assert len(by_shape) == 2  # q (32 x 32) and the GQA v (16 x 32)
    for shape, positions in by_shape.items():
        assert all(torch.equal(p, positions[0]) for p in positions)
        assert torch.equal(positions[0], fourierft.spectral_positions(*shape, layers[0].c.numel(), 777))
    other = fourierft.spectral_positions(32, 32, 64, 778)
    assert not torch.equal(other, fourierft.spectral_positions(32, 32, 64, 777))


def test_default_init_draws_coefficients_and_init_zero_starts_at_zero():
    base = torch.nn.Linear(8, 8)
    assert fourierft.FourierFTLinear(base, 10, 150.0, 777, init_zero=False).c.abs().sum() > 0
    assert torch.equal(fourierft.FourierFTLinear(base, 10, 150.0, 777, init_zero=True).delta_weight(),
                       torch.zeros(8, 8))


def test_too_many_frequencies_is_an_error():
    with pytest.raises(ValueError, match="n_frequency"):
        fourierft.FourierFTLinear(torch.nn.Linear(4, 2), 9, 1.0, 0, init_zero=True)


def _fourierft_link(mine, layer):
    assert torch.equal(mine.positions, layer.indices["default"])  # the same spectral positions
    return [(mine.c, layer.fourierft_spectrum["default"])]


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-t5", "tiny-llama", "tiny-gpt2"])
def test_matches_peft_fourierft(arch):
    peft = pytest.importorskip("peft")
    config = fourierft.FourierFTConfig(n_frequency=64, scaling=20.0)
    ours = fourierft.apply(fresh(arch), config)
    perturb(ours)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.FourierFTConfig(
        n_frequency=64, scaling=20.0, random_loc_seed=777, target_modules=names, fan_in_fan_out=arch == "tiny-gpt2"))
    assert_matches_peft(ours, theirs, names, _fourierft_link, mergeable=True)
