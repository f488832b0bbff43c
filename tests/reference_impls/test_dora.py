"""DoRA-specific promises: the decomposed weight m (W0 + s B A) / ||W0 + s B A||_c, its detached norm, and
peft's LoraConfig(use_dora=True) as the oracle."""
from __future__ import annotations

import pytest
import torch

from impl_cases import fresh, perturb
from peft_parity import assert_matches_peft
from reference_impls import dora
from reference_impls._core import find_targets


def _layer(d_in=6, d_out=5, r=2, alpha=4):
    torch.manual_seed(0)
    layer = dora.DoRALinear(torch.nn.Linear(d_in, d_out), r=r, alpha=alpha)
    with torch.no_grad():
        layer.B.normal_()
        layer.m.mul_(torch.linspace(0.5, 2.0, d_out))
    return layer


def test_forward_is_magnitude_times_normalised_direction():
    layer = _layer()
    W0, b = layer.base.weight, layer.base.bias
    V = W0 + (4 / 2) * layer.B @ layer.A  # (d_out, d_in)
    W = layer.m[:, None] * V / V.norm(dim=1, keepdim=True)
    x = torch.randn(3, 6)
    torch.testing.assert_close(layer(x), x @ W.T + b, atol=1e-6, rtol=1e-6)


def test_magnitude_starts_at_row_norms_of_W0():
    layer = dora.DoRALinear(torch.nn.Linear(6, 5), r=2, alpha=4)
    torch.testing.assert_close(layer.m, layer.base.weight.norm(dim=1))


def test_no_gradient_flows_through_the_norm():
    """With the norm a constant, dh/dB is (m / ||V||_c) s x A^T-shaped, the LoRA gradient rescaled per row."""
    layer = _layer()
    x = torch.randn(3, 6)
    g = torch.randn(3, 5)
    (layer(x) * g).sum().backward()
    scale = (layer.m / layer.direction_norm()).detach()  # (d_out,)
    expected = 2.0 * (scale[:, None] * g.T) @ (x @ layer.A.T)  # (d_out, r)
    torch.testing.assert_close(layer.B.grad, expected, atol=1e-5, rtol=1e-5)


def _dora_link(mine, layer):
    return [(mine.A, layer.lora_A["default"].weight), (mine.B, layer.lora_B["default"].weight),
            (mine.m, layer.lora_magnitude_vector["default"].weight)]


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-t5", "tiny-llama"])
def test_matches_peft_dora(arch):
    peft = pytest.importorskip("peft")
    config = dora.DoRAConfig(r=4, alpha=8)
    ours = dora.apply(fresh(arch), config)
    perturb(ours)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, use_dora=True,
                                                              target_modules=names))
    assert_matches_peft(ours, theirs, names, _dora_link, mergeable=True)
