"""SHiRA-specific promises: only r (d_in + d_out) fixed entries of W change, and the update can have full rank;
peft's ShiraModel as the oracle (same random mask)."""
from __future__ import annotations

import pytest
import torch

from impl_cases import fresh, perturb, prepare, run_training
from peft_parity import assert_matches_peft
from reference_impls import shira
from reference_impls._core import find_targets, merge


def _layers(model):
    return [m for m in model.modules() if isinstance(m, shira.SHiRALinear)]


def test_update_is_the_trained_values_at_the_masked_positions():
    layer = shira.SHiRALinear(torch.nn.Linear(6, 5), "x", r=1, seed=3)  # 11 of 30 entries
    with torch.no_grad():
        layer.values.normal_()
    S = torch.zeros(30)
    S[layer.index] = layer.values
    S = S.view(5, 6)
    assert layer.index.numel() == 11 and torch.equal(layer.index, layer.index.unique())
    x = torch.randn(2, 6)
    torch.testing.assert_close(layer(x), x @ (layer.base.weight + S).T + layer.base.bias, atol=1e-6, rtol=1e-6)


def test_training_changes_only_the_masked_entries_of_the_merged_weight():
    _, model, config = prepare("shira", "tiny-llama")
    W0 = {n: m.base.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, shira.SHiRALinear)}
    masks = {n: m.index.clone() for n, m in model.named_modules() if isinstance(m, shira.SHiRALinear)}
    run_training("shira", model, config, steps=3)
    merge(model)
    for name, m in model.named_modules():
        if isinstance(m, shira.SHiRALinear):
            changed = (m.base.weight != W0[name]).flatten().nonzero().flatten()
            assert len(changed) > 0 and set(changed.tolist()) <= set(masks[name].tolist())


def test_sparse_update_can_have_full_rank():
    layer = shira.SHiRALinear(torch.nn.Linear(16, 16), "x", r=2, seed=0)  # 64 entries, as a rank-2 LoRA
    with torch.no_grad():
        layer.values.normal_()
    assert torch.linalg.matrix_rank(layer.delta_weight()).item() > 2


def test_budget_beyond_the_matrix_and_unknown_masks_are_refused():
    with pytest.raises(ValueError, match="asks for 14 entries of x, which has only 12"):
        shira.SHiRALinear(torch.nn.Linear(3, 4), "x", r=2)
    with pytest.raises(ValueError, match="mask_type 'grad'"):
        shira.apply(fresh("tiny-bert"), shira.SHiRAConfig(r=2, mask_type="grad"))


def _shira_link(mine, layer):
    return [(mine.values, layer.shira_weight["default"])]


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch,seed", [("tiny-bert", 7), ("tiny-t5", 7), ("tiny-llama", 7), ("tiny-llama", None)])
def test_matches_peft_shira(arch, seed):  # peft's SHiRA takes nn.Linear only, so not GPT-2's Conv1D
    peft = pytest.importorskip("peft")
    config = shira.SHiRAConfig(r=2, random_seed=seed)
    ours = shira.apply(fresh(arch), config)
    perturb(ours)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.ShiraConfig(r=2, random_seed=seed, target_modules=names))
    inner = theirs.base_model.model
    for name in names:  # the same positions, in the same order
        rows, cols = inner.get_submodule(name).shira_indices["default"].long()
        mine = ours.get_submodule(name)
        assert torch.equal(rows * mine.d_in + cols, mine.index)
    assert_matches_peft(ours, theirs, names, _shira_link, mergeable=True)
