"""TinyLoRA-specific promises: ΔW = B (Σ_j v_j P_j) A with frozen SVD factors and fixed seeded P, v shared
by groups of modules under weight tying; peft's TinyLoraModel as the oracle."""
from __future__ import annotations

import pytest
import torch

from impl_cases import fresh, perturb, prepare
from peft_parity import assert_matches_peft
from reference_impls import tinylora
from reference_impls._core import count_trainable, find_targets


def test_update_is_svd_factors_around_a_combination_of_random_cores():
    torch.manual_seed(0)
    base = torch.nn.Linear(8, 6).requires_grad_(False)
    v = torch.nn.Parameter(torch.randn(5))
    layer = tinylora.TinyLoRALinear(base, v, r=3, seed=7)
    U, S, Vh = torch.linalg.svd(base.weight, full_matrices=False)
    torch.testing.assert_close(layer.B @ layer.A, U[:, :3] @ torch.diag(S[:3]) @ Vh[:3], atol=1e-5, rtol=1e-5)
    P = torch.normal(0.0, 3 ** -0.5, size=(5, 3, 3), generator=torch.Generator().manual_seed(7))
    R = sum(v[j] * P[j] for j in range(5))
    x = torch.randn(2, 8)
    torch.testing.assert_close(layer(x), base(x) + x @ (layer.B @ R @ layer.A).T, atol=1e-5, rtol=1e-5)


def test_weight_tying_groups_consecutive_modules():
    assert [tinylora.group_of(i, 4, 0.0) for i in range(4)] == [0, 1, 2, 3]
    assert [tinylora.group_of(i, 4, 0.5) for i in range(4)] == [0, 0, 1, 1]
    assert [tinylora.group_of(i, 4, 1.0) for i in range(4)] == [0, 0, 0, 0]
    _, model, _ = prepare("tinylora", "tiny-llama", config=tinylora.TinyLoRAConfig(r=4, u=16, weight_tying=1.0))
    assert count_trainable(model) == 16  # one v for the whole model


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch,tying", [("tiny-bert", 0.0), ("tiny-t5", 0.0), ("tiny-llama", 0.0),
                                        ("tiny-gpt2", 0.0), ("tiny-llama", 0.5)])
def test_matches_peft_tinylora(arch, tying):
    peft = pytest.importorskip("peft")
    config = tinylora.TinyLoRAConfig(r=4, u=16, weight_tying=tying)
    ours = tinylora.apply(fresh(arch), config)
    perturb(ours)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.TinyLoraConfig(
        r=4, u=16, weight_tying=tying, target_modules=names, fan_in_fan_out=arch == "tiny-gpt2"))
    inner = theirs.base_model.model
    for name in names:  # the same frozen factors and random cores
        mine, layer = ours.get_submodule(name), inner.get_submodule(name)
        assert torch.equal(mine.P, layer.tinylora_P["default"])
        torch.testing.assert_close(mine.B @ mine.A, layer.tinylora_B["default"] @ layer.tinylora_A["default"])
    seen: set[int] = set()

    def link(mine, layer):  # each shared v once
        key = layer._tinylora_v_key["default"]
        if id(mine.v) in seen:
            return []
        seen.add(id(mine.v))
        return [(mine.v, layer.tinylora_v["default"][key])]

    assert_matches_peft(ours, theirs, names, link, mergeable=True)
