"""RandLoRA-specific promises: ΔW = (alpha / r) Σ_j B_j Λ_j A Γ_j over ⌈d_min / r⌉ shared random bases,
which reaches full rank; only the diagonals train; peft's RandLoraModel as the oracle (same seeded bases)."""
from __future__ import annotations

import pytest
import torch

from impl_cases import fresh, perturb, prepare
from peft_parity import assert_matches_peft
from reference_impls import randlora
from reference_impls._core import count_trainable, find_targets, linear_dims


def _layers(model):
    return [m for m in model.modules() if isinstance(m, randlora.RandLoRALinear)]


def _layer(d_in, d_out, r=2, alpha=4.0):
    A, B = randlora.random_bases(max(d_in, d_out), min(d_in, d_out), r, seed=0, sparse=False)
    layer = randlora.RandLoRALinear(torch.nn.Linear(d_in, d_out), A, B, r, alpha)
    with torch.no_grad():
        layer.lam.normal_()
        layer.gamma.normal_()
    return layer


@pytest.mark.parametrize("d_in,d_out", [(5, 8), (8, 5)])  # the B side goes on the larger dimension
def test_update_is_a_sum_of_scaled_random_bases(d_in, d_out):
    layer = _layer(d_in, d_out)
    n, r = 3, 2  # ⌈5 / 2⌉ bases of rank 2
    Bf = layer.B[:8, :n, :].reshape(8, n * r)  # basis-major columns
    A = layer.A[:, 0, :5]                      # (r, d_min), one A for every basis
    total = torch.zeros(8, 5)
    for j in range(n):
        for k in range(r):
            i = k * n + j  # row i of the rank-major (λ A γ) meets column i of B's basis-major flattening
            total += torch.outer(Bf[:, i], layer.lam[k, j] * A[k] * layer.gamma[j])
    expected = (4.0 / 2) * (total if d_out == 8 else total.T)  # (d_out, d_in)
    torch.testing.assert_close(layer.delta_weight(), expected, atol=1e-5, rtol=1e-5)
    x = torch.randn(3, d_in)
    torch.testing.assert_close(layer(x), layer.base(x) + x @ expected.T, atol=1e-5, rtol=1e-5)


def test_update_reaches_full_rank_with_few_parameters():
    layer = _layer(16, 16, r=4)  # 4 bases: 4 * (4 + 16) = 80 trained numbers, LoRA at rank 16 trains 512
    assert layer.n == 4 and sum(p.numel() for p in (layer.lam, layer.gamma)) == 80
    assert torch.linalg.matrix_rank(layer.delta_weight()).item() == 16


def test_bases_are_shared_frozen_and_unit_std():
    _, model, _ = prepare("randlora", "tiny-llama")
    layers = _layers(model)
    assert all(m.A is layers[0].A and m.B is layers[0].B for m in layers)
    assert not layers[0].A.requires_grad and not layers[0].B.requires_grad
    torch.testing.assert_close(layers[0].B.std(), torch.tensor(1.0), atol=1e-2, rtol=0)
    assert count_trainable(model) == sum(m.n * (4 + min(linear_dims(m.base))) for m in layers)
    sparse_A, sparse_B = randlora.random_bases(32, 16, 4, seed=0, sparse=True)
    values = sparse_B.unique()  # ternary −c, 0, c, scaled to unit std; about 2/3 of the entries are 0
    assert len(values) == 3 and values[1] == 0 and values[0] == -values[2]
    assert 0.55 < (sparse_B == 0).float().mean() < 0.78


def _randlora_link(mine, layer):
    return [(mine.lam, layer.randlora_lambda["default"]), (mine.gamma, layer.randlora_gamma["default"])]


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch,sparse", [("tiny-bert", False), ("tiny-t5", False), ("tiny-llama", False),
                                         ("tiny-gpt2", False), ("tiny-llama", True)])
def test_matches_peft_randlora(arch, sparse):
    peft = pytest.importorskip("peft")
    config = randlora.RandLoRAConfig(r=4, alpha=80, sparse=sparse)
    ours = randlora.apply(fresh(arch), config)
    perturb(ours)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.RandLoraConfig(
        r=4, randlora_alpha=80, sparse=sparse, target_modules=names, fan_in_fan_out=arch == "tiny-gpt2"))
    # the same seed gives the same bases: nothing to copy but the trained diagonals
    assert torch.equal(theirs.base_model.randlora_A["default"], _layers(ours)[0].A)
    assert torch.equal(theirs.base_model.randlora_B["default"], _layers(ours)[0].B)
    assert_matches_peft(ours, theirs, names, _randlora_link, mergeable=True)
