"""PVeRA-specific promises: the 2r scaled outputs of the shared A are a latent's mean and log-variance, sampled
while training and averaged (z = μ) at inference; peft's PveraModel as the oracle (same shared A and B)."""
from __future__ import annotations

import pytest
import torch

from impl_cases import batch_for, fresh, logits, perturb
from peft_parity import assert_matches_peft
from reference_impls import pvera
from reference_impls._core import find_targets


def _layer(seed=None, sample=False):
    A, B = pvera.shared_projections(6, 5, r=3, seed=0)
    layer = pvera.PVeRALinear(torch.nn.Linear(6, 5), A, B, 0.1, sample_at_inference=sample, generator_seed=seed)
    with torch.no_grad():
        layer.b.normal_()
        layer.d.normal_()
    return layer, A, B


def test_eval_uses_the_mean_and_train_samples_with_the_reparameterisation():
    layer, A, B = _layer(seed=5)
    x = torch.randn(2, 6)
    proj = layer.d * (x @ A.T)  # (2, 6): [μ | log σ²]
    mu, logvar = proj[:, :3], proj[:, 3:]
    torch.testing.assert_close(layer.eval()(x), layer.base(x) + layer.b * (mu @ B.T), atol=1e-6, rtol=1e-6)
    eps = torch.randn((2, 3), generator=torch.Generator().manual_seed(5))
    z = mu + eps * torch.exp(0.5 * logvar)
    torch.testing.assert_close(layer.train()(x), layer.base(x) + layer.b * (z @ B.T), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(layer.delta_weight(), torch.diag(layer.b) @ B @ torch.diag(layer.d[:3]) @ A[:3])


def test_sample_at_inference_keeps_sampling_in_eval_mode():
    layer, _, _ = _layer(sample=True)
    x = torch.randn(2, 6)
    layer.eval()
    assert not torch.equal(layer(x), layer(x))


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-t5", "tiny-llama", "tiny-gpt2"])
def test_matches_peft_pvera(arch):
    peft = pytest.importorskip("peft")
    config = pvera.PVeRAConfig(r=8, generator_seed=11)
    ours = pvera.apply(fresh(arch), config)
    perturb(ours)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.PveraConfig(
        r=8, target_modules=names, generator_seed=11, fan_in_fan_out=arch == "tiny-gpt2"))
    first = ours.get_submodule(names[0])
    assert torch.equal(theirs.base_model.pvera_A["default"], first.A)
    assert torch.equal(theirs.base_model.pvera_B["default"], first.B)
    link = lambda m, layer: [(m.d, layer.pvera_lambda_d["default"]), (m.b, layer.pvera_lambda_b["default"])]  # noqa: E731
    # train mode: the same seeded ε in every layer of both models, so the sampled outputs agree too
    with torch.no_grad():
        for name in names:
            layer = theirs.base_model.model.get_submodule(name)
            layer.pvera_lambda_d["default"].copy_(ours.get_submodule(name).d)
            layer.pvera_lambda_b["default"].copy_(ours.get_submodule(name).b)
    batch = batch_for(ours)
    ours.train(), theirs.train()
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).logits, theirs(**batch).logits, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours(**batch).logits, logits(ours, batch), atol=1e-3)  # sampling did move them
    assert_matches_peft(ours, theirs, names, link, mergeable=True)  # eval mode: the mean
