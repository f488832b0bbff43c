"""DeLoRA-specific promises: ΔW = (λ / r) B Ξ A diag(‖w_j‖) with normalised rank-1 components, the bound
‖B Ξ A‖_F <= λ, λ trainable, the input dropout, and peft's DeLoRA as the oracle on tiny Llama, BERT and T5
(peft's DeLoRA takes nn.Linear only, so GPT-2's Conv1D is refused on both sides)."""
from __future__ import annotations

import pytest
import torch

from impl_cases import fresh, perturb
from peft_parity import assert_matches_peft
from reference_impls import delora
from reference_impls._core import find_targets


def _layer(d_in=6, d_out=5, r=3, lam=2.5, **kw):
    torch.manual_seed(0)
    layer = delora.DeloraLinear(torch.nn.Linear(d_in, d_out), r=r, delora_lambda=lam, **kw)
    with torch.no_grad():
        layer.B.normal_()
    return layer


def test_update_normalises_each_rank_one_component_and_scales_by_weight_column_norms():
    layer = _layer()
    A, B, W = layer.A.detach(), layer.B.detach(), layer.base.weight.detach()
    expected = torch.zeros(5, 6)
    for i in range(3):  # Σ_i (λ / r) b_i a_iᵀ / (‖a_i‖ ‖b_i‖), then column j times ‖W[:, j]‖
        expected += (2.5 / 3) * torch.outer(B[:, i], A[i]) / (A[i].norm() * B[:, i].norm())
    expected = expected * torch.stack([W[:, j].norm() for j in range(6)])[None, :]
    torch.testing.assert_close(layer.delta_weight(), expected, atol=1e-6, rtol=1e-6)
    x = torch.randn(4, 6)
    torch.testing.assert_close(layer(x), layer.base(x) + x @ expected.T, atol=1e-6, rtol=1e-6)


def test_frobenius_norm_before_the_column_scaling_is_bounded_by_lambda():
    layer = _layer(d_in=16, d_out=16, r=4, lam=3.0)
    unscaled = layer.delta_weight() / layer.w_norm  # B Ξ A · λ / r
    assert unscaled.norm() <= 3.0 + 1e-5
    with torch.no_grad():  # equal directions: the rank-1 terms add up to exactly λ
        layer.A.copy_(layer.A[:1].expand(4, -1))
        layer.B.copy_(layer.B[:, :1].expand(-1, 4))
    torch.testing.assert_close((layer.delta_weight() / layer.w_norm).norm(), torch.tensor(3.0))


def test_lambda_is_trainable_and_sets_the_strength_only():
    layer = _layer()
    before = layer.delta_weight().detach()
    with torch.no_grad():
        layer.delora_lambda.mul_(2)
        layer.A.mul_(7)  # rescaling A or B changes nothing: the components are normalised
    torch.testing.assert_close(layer.delta_weight(), 2 * before, atol=1e-6, rtol=1e-6)
    assert layer.delora_lambda.requires_grad and layer.delora_lambda.shape == (1,)


def test_starts_at_zero_update_and_keeps_the_initial_column_norms():
    layer = delora.DeloraLinear(torch.nn.Linear(8, 4), r=2, delora_lambda=15)
    assert torch.equal(layer.delta_weight(), torch.zeros(4, 8))
    torch.testing.assert_close(layer.w_norm, layer.base.weight.norm(dim=0))


def test_module_dropout_drops_input_elements_in_training_only():
    layer = _layer(module_dropout=0.5).train()
    x = torch.randn(3, 6)
    torch.manual_seed(1)
    out = layer(x) - layer.base(x)
    torch.manual_seed(1)
    dropped = torch.nn.functional.dropout(x, 0.5, training=True)
    torch.testing.assert_close(out, dropped @ layer.delta_weight().T, atol=1e-6, rtol=1e-6)
    layer.eval()
    torch.testing.assert_close(layer(x) - layer.base(x), x @ layer.delta_weight().T, atol=1e-6, rtol=1e-6)


def test_refuses_gpt2_conv1d_as_peft_does():
    from transformers.pytorch_utils import Conv1D

    with pytest.raises(NotImplementedError, match="nn.Linear"):
        delora.DeloraLinear(Conv1D(8, 4), r=1, delora_lambda=1)


def _delora_link(mine, layer):
    return [(mine.A, layer.delora_A["default"]), (mine.B, layer.delora_B["default"]),
            (mine.delora_lambda, layer.delora_lambda["default"])]


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-t5", "tiny-llama"])
def test_matches_peft_delora(arch):
    peft = pytest.importorskip("peft")
    from impl_cases import formula_count

    config = delora.DeloraConfig(r=4, delora_lambda=5)
    ours = delora.apply(fresh(arch), config)
    perturb(ours)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.DeloraConfig(r=4, delora_lambda=5, target_modules=names))
    for name in names:  # the same frozen column norms on both sides
        torch.testing.assert_close(ours.get_submodule(name).w_norm,
                                   theirs.base_model.model.get_submodule(name).delora_w_norm["default"])
    assert theirs.get_nb_trainable_parameters()[0] == formula_count("delora", fresh(arch), config)
    assert_matches_peft(ours, theirs, names, _delora_link, mergeable=True)
