"""PiSSA-specific promises: A and B hold the r principal singular components of W, the frozen base the rest;
peft's init_lora_weights='pissa' / 'pissa_niter_N' as the oracle for the initialisation, then for outputs,
gradients and the merge."""
from __future__ import annotations

import pytest
import torch

from impl_cases import fresh, prepare
from peft_parity import assert_matches_peft
from reference_impls import pissa
from reference_impls._core import Target, find_targets, linear_weight, replace_module


def _layer(d_in=12, d_out=8, r=3, alpha=6, niter=None, seed=0):
    torch.manual_seed(seed)
    base = torch.nn.Linear(d_in, d_out)
    W = base.weight.detach().clone()
    return pissa.pissa_linear(Target("x", base, (), slice(0, d_out)), r, alpha, niter), W


def test_adapter_holds_principal_components_and_base_the_residual():
    layer, W = _layer()
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    principal = U[:, :3] @ torch.diag(S[:3]) @ Vh[:3]
    torch.testing.assert_close(layer.delta_weight(), principal, atol=1e-5, rtol=1e-5)   # s B A = U_r S_r V_rᵀ
    torch.testing.assert_close(layer.base.weight, W - principal, atol=1e-5, rtol=1e-5)  # W_res
    torch.testing.assert_close(torch.linalg.svdvals(layer.base.weight)[:5], S[3:], atol=1e-5, rtol=1e-5)
    # both factors carry sqrt(S_r / s), s = alpha / r = 2: A's rows and B's columns have that norm
    root = torch.sqrt(S[:3] / 2)
    torch.testing.assert_close(layer.A.norm(dim=1), root, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.B.norm(dim=0), root, atol=1e-5, rtol=1e-5)


def test_randomised_svd_finds_the_same_components_on_a_clear_spectrum():
    torch.manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(10, 10))
    V, _ = torch.linalg.qr(torch.randn(16, 10))
    W = U @ torch.diag(torch.tensor([9.0, 7, 5, 1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])) @ V.T  # gap after 3
    A, B = pissa.principal_factors(W, r=3, scaling=1.0, niter=4)
    A_full, B_full = pissa.principal_factors(W, r=3, scaling=1.0, niter=None)
    torch.testing.assert_close(B @ A, B_full @ A_full, atol=1e-4, rtol=1e-4)


def test_r_beyond_the_weight_rank_is_refused():
    with pytest.raises(ValueError, match="r=9 exceeds min"):
        pissa.pissa_linear(Target("x", torch.nn.Linear(12, 8), (), slice(0, 8)), 9, 9, None)


def _peft_pissa(peft, arch, names, init):
    return peft.get_peft_model(fresh(arch), peft.LoraConfig(
        r=4, lora_alpha=4, lora_dropout=0.0, target_modules=names, init_lora_weights=init,
        fan_in_fan_out=arch == "tiny-gpt2"))


def _assert_same_init(ours, theirs, names):
    inner = theirs.base_model.model
    for name in names:
        mine, layer = ours.get_submodule(name), inner.get_submodule(name)
        torch.testing.assert_close(mine.A, layer.lora_A["default"].weight, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mine.B, layer.lora_B["default"].weight, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(linear_weight(mine.base), linear_weight(layer.base_layer), atol=1e-5, rtol=1e-5)


def _lora_link(mine, layer):
    return [(mine.A, layer.lora_A["default"].weight), (mine.B, layer.lora_B["default"].weight)]


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-t5", "tiny-llama", "tiny-gpt2"])
def test_matches_peft_pissa_init_then_outputs_gradients_and_merge(arch):
    peft = pytest.importorskip("peft")
    config = pissa.PiSSAConfig(r=4, alpha=4, niter=None)
    _, ours, _ = prepare("pissa", arch, config=config)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = _peft_pissa(peft, arch, names, "pissa")
    _assert_same_init(ours, theirs, names)
    assert_matches_peft(ours, theirs, names, _lora_link, mergeable=True)


@pytest.mark.peft_oracle
def test_matches_peft_pissa_niter_with_the_same_random_draws():
    """peft's pissa_init and ours both call torch.svd_lowrank, which draws from the global generator: with
    the generator seeded the same way before each module's init, the factors and residuals are identical."""
    peft = pytest.importorskip("peft")
    arch = "tiny-llama"
    config = pissa.PiSSAConfig(r=4, alpha=4, niter=2)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = _peft_pissa(peft, arch, names, False)  # plain LoRA layers; we run peft's PiSSA init below
    ours = fresh(arch)
    inner = theirs.base_model.model
    for i, t in enumerate(find_targets(ours, config.target_modules)):
        torch.manual_seed(100 + i)
        inner.get_submodule(t.name).pissa_init("default", "pissa_niter_2")
        torch.manual_seed(100 + i)
        replace_module(ours, t.name, pissa.pissa_linear(t, config.r, config.alpha, config.niter))
    _assert_same_init(ours, theirs, names)
