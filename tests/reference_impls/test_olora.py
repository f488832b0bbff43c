"""OLoRA-specific promises: B starts as the first r columns of W's orthonormal QR factor, A as the first r rows
of R, and W_res = W - s B A; peft's init_lora_weights='olora' as the oracle for the initialisation, then for
outputs, gradients and the merge."""
from __future__ import annotations

import pytest
import torch

from impl_cases import fresh, prepare
from peft_parity import assert_matches_peft
from reference_impls import olora
from reference_impls._core import Target, find_targets, linear_weight


def _layer(d_in=12, d_out=8, r=3, alpha=6):
    torch.manual_seed(0)
    base = torch.nn.Linear(d_in, d_out)
    W = base.weight.detach().clone()
    return olora.olora_linear(Target("x", base, (), slice(0, d_out)), r, alpha), W


def test_factors_are_the_leading_qr_columns_and_rows():
    layer, W = _layer()
    Q, R = torch.linalg.qr(W)
    torch.testing.assert_close(layer.B, Q[:, :3])
    torch.testing.assert_close(layer.A, R[:3])
    torch.testing.assert_close(layer.B.T @ layer.B, torch.eye(3), atol=1e-6, rtol=0)  # orthonormal columns
    assert torch.equal(layer.A, layer.A.triu())                                        # R's rows: upper triangular


def test_residual_is_W_minus_scaled_product_so_the_layer_starts_at_W():
    layer, W = _layer()
    s = 6 / 3  # alpha / r, not divided out of A or B (as PiSSA does)
    torch.testing.assert_close(layer.base.weight, W - s * layer.B @ layer.A, atol=1e-6, rtol=1e-6)
    x = torch.randn(4, 12)
    torch.testing.assert_close(layer(x), x @ W.T + layer.base.bias, atol=1e-5, rtol=1e-5)


def _lora_link(mine, layer):
    return [(mine.A, layer.lora_A["default"].weight), (mine.B, layer.lora_B["default"].weight)]


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-t5", "tiny-llama"])  # peft's QR on GPT-2 is of Wᵀ (see olora.py)
def test_matches_peft_olora_init_then_outputs_gradients_and_merge(arch):
    peft = pytest.importorskip("peft")
    config = olora.OLoRAConfig(r=4, alpha=8)
    _, ours, _ = prepare("olora", arch, config=config)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                              target_modules=names, init_lora_weights="olora"))
    inner = theirs.base_model.model
    for name in names:
        mine, layer = ours.get_submodule(name), inner.get_submodule(name)
        torch.testing.assert_close(mine.A, layer.lora_A["default"].weight, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(mine.B, layer.lora_B["default"].weight, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(linear_weight(mine.base), layer.base_layer.weight, atol=1e-6, rtol=1e-6)
    assert_matches_peft(ours, theirs, names, _lora_link, mergeable=True)
