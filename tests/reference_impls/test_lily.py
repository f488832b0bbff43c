"""Lily-specific promises: A shared within stride blocks, B experts shared per module type, the batch-averaged
router mix; peft's Lily as the oracle (its sharing and its parameters)."""
from __future__ import annotations

import pytest
import torch

from impl_cases import fresh, perturb
from peft_parity import assert_matches_peft
from reference_impls import lily
from reference_impls._core import count_trainable, find_targets


def _layers(model):
    return [m for m in model.modules() if isinstance(m, lily.LilyLinear)]


def test_sharing_of_A_within_stride_blocks_and_of_B_per_module_type():
    model = lily.apply(fresh("tiny-t5"), lily.LilyConfig(r=4, stride_a=2, num_b=3))  # 4 blocks: q and v of each
    q = [m for n, m in model.named_modules() if n.endswith("SelfAttention.q")]
    v = [m for n, m in model.named_modules() if n.endswith("SelfAttention.v")]
    assert len(q) == 4
    assert q[0].A is q[1].A and q[2].A is q[3].A and q[1].A is not q[2].A
    assert all(m.B is q[0].B for m in q) and all(m.B is v[0].B for m in v) and q[0].B is not v[0].B
    assert len({id(m.router) for m in q + v}) == 8
    # 2 A's per role, 8 routers, one expert set per role
    assert count_trainable(model) == 2 * (2 * 4 * 32) + 8 * 3 * 4 + 2 * (3 * 4 * 32)


def test_update_mixes_experts_with_router_probabilities_averaged_over_the_batch():
    torch.manual_seed(0)
    A, B = torch.nn.Parameter(torch.randn(3, 6)), torch.nn.Parameter(torch.randn(2, 3, 5))
    layer = lily.LilyLinear(torch.nn.Linear(6, 5), A, B, scaling=0.5)
    x = torch.randn(2, 4, 6)
    z = x @ A.T  # (2, 4, 3)
    p = torch.softmax(z @ layer.router.T, dim=-1).mean(dim=(0, 1))  # (2,)
    expected = layer.base(x) + 0.5 * z @ (p[0] * B[0] + p[1] * B[1])
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-6)
    # the mix for one sequence depends on the other sequences of the batch
    assert not torch.allclose(layer(x[:1]), layer(x)[:1])


def _lily_link(mine, layer):
    num_b, r, d_out = mine.B.shape
    return [(mine.A, layer.lily_A["default"].weight), (mine.router, layer.lily_router["default"].weight),
            (mine.B, layer.lily_B["default"].weight, lambda t: t.view(num_b, r, d_out))]


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch,stride_a", [("tiny-bert", 1), ("tiny-t5", 2), ("tiny-llama", 2)])
def test_matches_peft_lily(arch, stride_a):
    peft = pytest.importorskip("peft")
    config = lily.LilyConfig(r=4, stride_a=stride_a, num_b=3, scaling=2.0)
    ours = lily.apply(fresh(arch), config)
    perturb(ours)
    targets = find_targets(fresh(arch), config.target_modules)
    names = [t.name for t in targets]
    # peft groups by the target suffix it matched: give it one suffix per role, as our roles group
    suffixes = sorted({".".join(n.split(".")[-2:]) for n in names})
    theirs = peft.get_peft_model(fresh(arch), peft.LilyConfig(r=4, stride_A=stride_a, num_B=3, scaling=2.0,
                                                              target_modules=suffixes))
    inner = theirs.base_model.model
    for name in names:  # the same sharing on both sides
        assert (ours.get_submodule(name).A is ours.get_submodule(names[0]).A) == \
               (inner.get_submodule(name).lily_A["default"] is inner.get_submodule(names[0]).lily_A["default"])
    assert_matches_peft(ours, theirs, names, _lily_link, mergeable=False)
