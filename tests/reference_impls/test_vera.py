"""VeRA-specific promises: ΔW = Λ_b B Λ_d A with one frozen random pair shared by every layer and sliced to
its shape; only d and b train; peft's VeraModel as the oracle."""
from __future__ import annotations

import pytest
import torch

from impl_cases import fresh, perturb, prepare
from peft_parity import assert_matches_peft
from reference_impls import vera
from reference_impls._core import count_trainable, find_targets, linear_dims


def _layers(model):
    return [m for m in model.modules() if isinstance(m, vera.VeRALinear)]


def test_update_is_scaled_random_projections():
    A, B = vera.shared_projections(8, 7, r=3, seed=0)
    layer = vera.VeRALinear(torch.nn.Linear(6, 5), A, B, d_initial=0.1)
    with torch.no_grad():
        layer.b.normal_()
        layer.d.normal_()
    x = torch.randn(2, 4, 6)
    A_s, B_s = A[:, :6], B[:5, :]  # the top-left slices for a 6 -> 5 layer
    delta = torch.diag(layer.b) @ B_s @ torch.diag(layer.d) @ A_s
    torch.testing.assert_close(layer(x), layer.base(x) + x @ delta.T, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(layer.delta_weight(), delta)


def test_projections_are_kaiming_uniform_from_the_seed():
    A, B = vera.shared_projections(40, 30, r=20, seed=3)
    A2, B2 = vera.shared_projections(40, 30, r=20, seed=3)
    assert torch.equal(A, A2) and torch.equal(B, B2)
    assert not torch.equal(A, vera.shared_projections(40, 30, r=20, seed=4)[0])
    # bound sqrt(6 / fan_in): fan_in is d_in for A (r, d_in) and r for B (d_out, r)
    assert A.abs().max() <= (6 / 40) ** 0.5 and A.abs().max() > 0.9 * (6 / 40) ** 0.5
    assert B.abs().max() <= (6 / 20) ** 0.5 and B.abs().max() > 0.9 * (6 / 20) ** 0.5


def test_one_shared_pair_and_only_the_vectors_train():
    config = vera.VeRAConfig(r=8)
    _, model, _ = prepare("vera", "tiny-llama", config=config)
    layers = _layers(model)
    assert {linear_dims(m.base)[1] for m in layers} == {32, 16}  # q and the grouped-query v differ in width
    assert all(m.A is layers[0].A and m.B is layers[0].B for m in layers)
    assert layers[0].A.shape == (8, 32) and layers[0].B.shape == (32, 8)  # the largest d_in, d_out
    assert not layers[0].A.requires_grad and not layers[0].B.requires_grad
    assert count_trainable(model) == sum(8 + linear_dims(m.base)[1] for m in layers)
    assert all(torch.equal(m.d, torch.full((8,), 0.1)) and torch.equal(m.b, torch.zeros_like(m.b)) for m in layers)


def test_save_projection_false_keeps_A_and_B_out_of_the_state_dict():
    _, kept, _ = prepare("vera", "tiny-bert", config=vera.VeRAConfig(r=8))
    _, dropped, _ = prepare("vera", "tiny-bert", config=vera.VeRAConfig(r=8, save_projection=False))
    assert any(k.endswith(".A") for k in kept.state_dict())
    assert not any(k.endswith(".A") or k.endswith(".B") for k in dropped.state_dict())


def _vera_link(mine, layer):
    return [(mine.d, layer.vera_lambda_d["default"]), (mine.b, layer.vera_lambda_b["default"])]


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-t5", "tiny-llama", "tiny-gpt2"])
def test_matches_peft_vera(arch):
    peft = pytest.importorskip("peft")
    config = vera.VeRAConfig(r=8)
    ours = vera.apply(fresh(arch), config)
    perturb(ours)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.VeraConfig(
        r=8, target_modules=names, vera_dropout=0.0, d_initial=0.1, projection_prng_key=0,
        fan_in_fan_out=arch == "tiny-gpt2"))  # GPT-2's Conv1D stores W as (d_in, d_out)
    # the same seed gives the same shared projections: nothing to copy but the trained vectors
    A, B = _layers(ours)[0].A, _layers(ours)[0].B
    assert torch.equal(theirs.base_model.vera_A["default"], A)
    assert torch.equal(theirs.base_model.vera_B["default"], B)
    assert_matches_peft(ours, theirs, names, _vera_link, mergeable=True)
