"""CorDA-specific promises: the context-oriented SVD reconstructs W0 and puts the largest (ipm) or smallest
(kpm) components into the adapter, the residual makes the model start unchanged, and peft's
preprocess_corda + corda init (same weights, same data) gives the same A, B and residual; then peft is the
oracle for outputs, gradients and merge."""
from __future__ import annotations

import pytest
import torch

from impl_cases import batch_for, fresh, logits
from peft_parity import assert_matches_peft
from reference_impls import corda
from reference_impls._core import find_targets


def test_context_svd_reconstructs_W_and_orders_components_by_covariance_weighted_energy():
    torch.manual_seed(0)
    W, X = torch.randn(6, 8), torch.randn(50, 8) * torch.linspace(0.1, 3, 8)
    C = X.T @ X / 50
    U, S, V = corda.context_svd(W, C)
    torch.testing.assert_close(U @ torch.diag(S) @ V.T, W, atol=1e-4, rtol=1e-4)
    assert torch.all(S[:-1] >= S[1:])
    torch.testing.assert_close(U.T @ U, torch.eye(6), atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["ipm", "kpm"])
def test_adapter_takes_the_largest_or_smallest_components_and_the_model_starts_unchanged(method):
    base = fresh("tiny-llama")
    model = corda.apply(fresh("tiny-llama"), corda.CorDAConfig(r=4, alpha=8, corda_method=method))
    name = "model.layers.1.self_attn.q_proj"
    layer = model.get_submodule(name)
    W0 = base.get_submodule(name).weight
    C = corda.input_covariances(fresh("tiny-llama"), [name], [batch_for(base)])[name]
    U, S, V = corda.context_svd(W0, C)
    keep = slice(0, 4) if method == "ipm" else slice(28, 32)
    torch.testing.assert_close(layer.delta_weight(), U[:, keep] @ torch.diag(S[keep]) @ V[:, keep].T,
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(layer.base.weight + layer.delta_weight(), W0, atol=1e-5, rtol=0)
    batch = batch_for(base)
    torch.testing.assert_close(logits(model, batch), logits(base, batch), atol=1e-4, rtol=1e-4)


def _link(mine, layer):
    return [(mine.A, layer.lora_A["default"].weight), (mine.B, layer.lora_B["default"].weight)]


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch,method", [("tiny-bert", "ipm"), ("tiny-llama", "ipm"), ("tiny-llama", "kpm")])
def test_matches_peft_corda_init_and_then_outputs_gradients_and_merge(arch, method):
    peft = pytest.importorskip("peft")
    from peft.tuners.lora.config import CordaConfig
    from peft.tuners.lora.corda import preprocess_corda

    config = corda.CorDAConfig(r=4, alpha=8, corda_method=method)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    ours = corda.apply(fresh(arch), config)
    theirs_base = fresh(arch)
    batch = batch_for(theirs_base)
    peft_config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=names,
                                  init_lora_weights="corda", corda_config=CordaConfig(corda_method=method))

    @torch.no_grad()
    def run_model():  # one sequence per forward, as peft's covariance hook expects
        for i in range(len(batch["input_ids"])):
            theirs_base(**{k: v[i:i + 1] for k, v in batch.items()})

    preprocess_corda(theirs_base, peft_config, run_model=run_model)
    theirs = peft.get_peft_model(theirs_base, peft_config)
    inner = theirs.base_model.model
    for name in names:
        mine, layer = ours.get_submodule(name), inner.get_submodule(name)
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        sign = torch.sign((A * mine.A).sum(1))  # u_i and v_i flip together: the product is sign-free
        torch.testing.assert_close(A, sign[:, None] * mine.A, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(B, sign * mine.B, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(layer.base_layer.weight, mine.base.weight, atol=1e-5, rtol=0)  # same residual
    assert_matches_peft(ours, theirs, names, _link, mergeable=True)
