"""DeFT-specific promises: W' = (I − Q Nᵀ) W0 + Q s R for both projections, the start at W0 (not in PaRa mode),
the qr projector is orthogonal; peft's DeFT as the oracle."""
from __future__ import annotations

import pytest
import torch

from impl_cases import fresh, perturb
from peft_parity import assert_matches_peft
from reference_impls import deft
from reference_impls._core import find_targets


def _layer(decomposition="relu", para=False, alpha=None):
    torch.manual_seed(0)
    layer = deft.DeFTLinear(torch.nn.Linear(8, 6).requires_grad_(False), r=2, decomposition=decomposition,
                            alpha=alpha, para=para)
    with torch.no_grad():
        for p in layer.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    return layer


@pytest.mark.parametrize("decomposition,para,alpha", [("relu", False, None), ("qr", False, 4.0), ("relu", True, None)])
def test_forward_is_projected_weight_plus_injection(decomposition, para, alpha):
    layer = _layer(decomposition, para, alpha)
    W0, b = layer.base.weight, layer.base.bias
    if decomposition == "relu":
        Q, N = layer.P, torch.relu(layer.P)
    else:
        Q = torch.linalg.qr(layer.P)[0]
        N = Q
    W = (torch.eye(6) - Q @ N.T) @ W0
    if not para:
        W = W + Q @ ((alpha / 2 if alpha else 1.0) * layer.R)
    x = torch.randn(3, 8)
    torch.testing.assert_close(layer(x), x @ W.T + b, atol=1e-5, rtol=1e-5)
    layer.merge()
    torch.testing.assert_close(layer.base.weight, W, atol=1e-5, rtol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, W0, atol=1e-6, rtol=1e-5)


def test_starts_at_W0_except_in_para_mode_and_qr_projects_orthogonally():
    x = torch.randn(3, 8)
    for decomposition in ("relu", "qr"):
        layer = deft.DeFTLinear(torch.nn.Linear(8, 6), r=2, decomposition=decomposition)
        torch.testing.assert_close(layer(x), layer.base(x), atol=1e-6, rtol=1e-6)
    para = deft.DeFTLinear(torch.nn.Linear(8, 6), r=2, para=True)
    assert not torch.allclose(para(x), para.base(x), atol=1e-7)
    Q, _ = _layer("qr").project()
    P = Q @ Q.T
    torch.testing.assert_close(P @ P, P, atol=1e-6, rtol=0)


def _link(mine, layer):
    pairs = [(mine.P, layer.deft_P["default"])]
    return pairs if mine.para else pairs + [(mine.R, layer.deft_R["default"])]


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch,decomposition,para,alpha", [("tiny-bert", "relu", False, None),
                                                           ("tiny-t5", "relu", False, None),
                                                           ("tiny-llama", "qr", False, 8),
                                                           ("tiny-llama", "relu", True, None),
                                                           ("tiny-gpt2", "relu", False, None)])
def test_matches_peft_deft(arch, decomposition, para, alpha):
    peft = pytest.importorskip("peft")
    config = deft.DeFTConfig(r=4, decomposition=decomposition, alpha=alpha, para=para)
    ours = deft.apply(fresh(arch), config)
    perturb(ours)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.DeftConfig(
        r=4, decomposition_method=decomposition, alpha=alpha, para=para, target_modules=names,
        fan_in_fan_out=arch == "tiny-gpt2"))
    assert_matches_peft(ours, theirs, names, _link, mergeable=True)
