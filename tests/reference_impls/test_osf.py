"""OSF-specific promises: the top singular directions of W0 stay frozen, the low ones train as full factors
whose gradients are kept orthogonal to the frozen subspace; peft's OSFModel as the oracle."""
from __future__ import annotations

import pytest
import torch

from impl_cases import formula_count, fresh, perturb, prepare, run_training
from peft_parity import assert_matches_peft
from reference_impls import osf
from reference_impls._core import Target, count_trainable, find_targets, linear_dims, merge, target_dims


def _layer(d_in=8, d_out=6, k=2):
    torch.manual_seed(0)
    base = torch.nn.Linear(d_in, d_out).requires_grad_(False)
    return osf.OSFLinear(Target("x", base, (), slice(0, d_out)), k)


@pytest.mark.parametrize("d_in,d_out", [(8, 6), (6, 8)])  # either factor may be the square one
def test_gradients_stay_orthogonal_to_the_frozen_directions(d_in, d_out):
    layer = _layer(d_in, d_out)
    x = torch.randn(5, d_in)
    (layer(x) ** 2).sum().backward()  # S, U, V at init: a nonzero gradient for each
    assert layer.U.grad.abs().max() > 0 and layer.V.grad.abs().max() > 0
    t = min(d_in, d_out) - 2  # trained directions
    torch.testing.assert_close(layer.U_high.T @ layer.U.grad, torch.zeros(2, t), atol=1e-6, rtol=0)
    torch.testing.assert_close(layer.V.grad @ layer.V_high.T, torch.zeros(t, 2), atol=1e-6, rtol=0)


def test_update_is_the_change_of_the_low_part():
    layer = _layer()
    W0 = layer.base.weight.detach().clone()
    U, S, Vh = torch.linalg.svd(W0, full_matrices=False)
    torch.testing.assert_close(layer.U_high @ torch.diag(S[:2]) @ layer.V_high + (layer.U0 * layer.S0) @ layer.V0, W0,
                               atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        layer.S.mul_(1.5)
    x = torch.randn(3, 8)
    expected = (layer.U * layer.S) @ layer.V - (layer.U0 * layer.S0) @ layer.V0
    torch.testing.assert_close(layer(x), layer.base(x) + x @ expected.T, atol=1e-5, rtol=1e-5)


def test_training_leaves_the_top_subspace_of_W_unchanged():
    _, model, config = prepare("osf", "tiny-llama")
    name = find_targets(fresh("tiny-llama"), config.target_modules)[0].name
    layer = model.get_submodule(name)
    U_high, V_high = layer.U_high.clone(), layer.V_high.clone()
    top = U_high.T @ layer.base.weight.detach() @ V_high.T  # (k, k) = S_high
    run_training("osf", model, config, steps=3)
    merge(model)
    W = layer.base.weight.detach()
    assert not torch.allclose(W, layer.U0 @ torch.diag(layer.S0) @ layer.V0 + U_high @ top @ V_high, atol=1e-4)
    # Adam rescales the projected gradients entry by entry, so U and V leave the orthogonal complement only
    # slightly: the frozen block of W moves by less than 2e-3 while W itself moves by more than 1e-4
    torch.testing.assert_close(U_high.T @ W @ V_high.T, top, atol=2e-3, rtol=0)


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-t5", "tiny-llama"])  # peft's OSF takes nn.Linear only
def test_matches_peft_osf(arch):
    peft = pytest.importorskip("peft")
    config = osf.OSFConfig(target_modules=("q", "v", "down"))
    ours = osf.apply(fresh(arch), config)
    perturb(ours, std=0.01)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.OSFConfig(target_modules=names))

    def link(mine, layer):
        p = layer.osf_svd_params["default"]
        return [(mine.U, p["U_low"]), (mine.S, p["S_low"]), (mine.V, p["V_low"])]

    assert_matches_peft(ours, theirs, names, link, mergeable=True)


@pytest.mark.peft_oracle
def test_trainable_rank_matches_a_peft_rank_pattern_and_the_catalog_formula():
    """trainable_rank t freezes min(d_in, d_out) - t directions in every matrix: peft's rank_pattern mapping each
    module to that effective_rank (as the MetaMathQA rank128 run does) builds the same layers and count."""
    peft = pytest.importorskip("peft")
    arch, t = "tiny-llama", 8
    config = osf.OSFConfig(target_modules=("q", "k", "v", "down"), trainable_rank=t)
    base = fresh(arch)
    ours = osf.apply(fresh(arch), config)
    for target in find_targets(base, config.target_modules):
        d_in, d_out = linear_dims(target.module)
        layer = ours.get_submodule(target.name)
        assert layer.U.shape == (d_out, t) and layer.S.shape == (t,) and layer.V.shape == (t, d_in)
    assert count_trainable(ours) == formula_count("osf", base, config)
    assert count_trainable(ours) == sum(t * (d_in + d_out + 1) for d_in, d_out in target_dims(base, config.target_modules))
    perturb(ours, std=0.01)
    names = [t_.name for t_ in find_targets(base, config.target_modules)]
    pattern = {n: min(linear_dims(base.get_submodule(n))) - t for n in names}
    theirs = peft.get_peft_model(fresh(arch), peft.OSFConfig(target_modules=names, rank_pattern=pattern))
    assert theirs.get_nb_trainable_parameters()[0] == count_trainable(ours)

    def link(mine, layer):
        p = layer.osf_svd_params["default"]
        return [(mine.U, p["U_low"]), (mine.S, p["S_low"]), (mine.V, p["V_low"])]

    assert_matches_peft(ours, theirs, names, link, mergeable=True)
