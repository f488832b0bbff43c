"""EVA-specific promises: A holds the top principal directions of each layer's inputs (incremental PCA that
agrees with the PCA of all rows), the rank budget goes to the largest explained-variance ratios, layers of equal
inputs share one PCA, and peft's initialize_lora_eva_weights as the oracle: the same ranks, the same A (on
the same weights and data), then the same outputs, gradients and merge on tiny Llama, BERT and T5."""
from __future__ import annotations

import warnings

import pytest
import torch

from impl_cases import batch_for, fresh
from peft_parity import assert_matches_peft
from reference_impls import eva
from reference_impls._core import count_trainable, find_targets


def _centred_pca(X: torch.Tensor, k: int):
    """Top-k right-singular vectors of X − mean (largest entry of each positive) and σ² / Σ_j Σ_i (x_ij − m_j)²."""
    Xc = X.double() - X.double().mean(0)
    _, S, Vh = torch.linalg.svd(Xc, full_matrices=False)
    Vh = Vh * torch.sign(Vh[range(len(Vh)), Vh.abs().argmax(1)])[:, None]
    return Vh[:k], (S.square() / Xc.square().sum())[:k]


def test_incremental_pca_equals_pca_of_all_rows_seen():
    torch.manual_seed(0)
    # rows of rank 3 around a mean, distinct variances: keeping k = 3 components loses nothing between minibatches,
    # and q = 2k = 6 = d makes the randomized SVD exact
    X = torch.randn(40, 3) @ torch.diag(torch.tensor([5.0, 3.0, 1.0])) @ torch.linalg.qr(torch.randn(6, 3))[0].T + 3.0
    pca = eva.IncrementalPCA(k=3)
    pca.partial_fit(X[:15])
    V, ratio = _centred_pca(X[:15], 3)
    torch.testing.assert_close(pca.components.double(), V, atol=1e-5, rtol=0)
    torch.testing.assert_close(pca.variance_ratio.double(), ratio, atol=1e-6, rtol=0)
    pca.partial_fit(X[15:])  # the second minibatch: stacked under Σ Vᵀ with the mean-correction row
    V, ratio = _centred_pca(X, 3)
    torch.testing.assert_close(pca.components.double(), V, atol=1e-5, rtol=0)
    torch.testing.assert_close(pca.variance_ratio.double(), ratio, atol=1e-6, rtol=0)


class _Fixed:
    def __init__(self, ratios):
        self.variance_ratio = torch.tensor(ratios, dtype=torch.float64)


def test_rank_budget_goes_to_the_largest_explained_variance_ratios():
    pca = {"a": _Fixed([0.50, 0.30, 0.02]), "b": _Fixed([0.40, 0.04, 0.03]), "c": _Fixed([0.01, 0.005, 0.001])}
    groups = {"a": "a", "b": "b", "c": "c"}
    # budget 4: 0.50, 0.40, 0.30, 0.04 -> a: 2, b: 2, c: 0 (c's adapter is dropped)
    assert eva._distribute(["a", "b", "c"], groups, pca, budget=4) == {"a": 2, "b": 2, "c": 0}
    assert eva._distribute(["a", "b", "c"], groups, pca, budget=6) == {"a": 3, "b": 3, "c": 0}


def test_layers_with_equal_inputs_share_one_pca_and_its_layer_takes_the_larger_rank():
    pca = {"q": _Fixed([0.6, 0.2]), "o": _Fixed([0.5, 0.1])}
    groups = {"q": "q", "v": "q", "o": "o"}
    # candidates q: .6 .2, o: .5 .1, v (q's): .6 .2; budget 3 -> .6 (q), .6 (v), .5 (o)
    assert eva._distribute(["q", "o", "v"], groups, pca, budget=3) == {"q": 1, "o": 1, "v": 1}
    # budget 5: q and v both get .6 and .2, o .5: q 2, v 2, o 1
    assert eva._distribute(["q", "o", "v"], groups, pca, budget=5) == {"q": 2, "o": 1, "v": 2}


def test_a_is_the_top_principal_directions_of_the_layer_inputs_and_the_model_starts_unchanged():
    model = fresh("tiny-llama")
    batch = batch_for(model)
    rows = {}
    name = "model.layers.0.mlp.down_proj"
    handle = model.get_submodule(name).register_forward_hook(lambda m, i, o: rows.update(x=i[0].detach()))
    with torch.no_grad():
        base_logits = model(**batch).logits
    handle.remove()
    X = rows["x"].reshape(-1, rows["x"].shape[-1])  # every position: mask and labels are all valid here
    ours = eva.apply(model, eva.EvaConfig(r=4, rho=1.0, tau=0.99, target_modules=("down",)), data=[batch])
    layer = ours.get_submodule(name)
    V, _ = _centred_pca(X, 4)
    # randomized SVD (q = 8 of 64 directions) and a batch seen twice until tau is met: each row of A is the
    # exact i-th principal direction up to a cosine of 0.999, not bitwise
    cosines = (layer.A.double() * V).sum(1).abs()
    assert torch.all(cosines > 0.999), cosines
    assert torch.equal(layer.B, torch.zeros_like(layer.B)) and layer.scaling == 8 / 4
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).logits, base_logits)


def _lora_link(mine, layer):
    return [(mine.A, layer.lora_A["default"].weight), (mine.B, layer.lora_B["default"].weight)]


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch, targets, rho, n_batches", [
    ("tiny-llama", ("q", "v", "o", "down"), 2.0, 2),
    ("tiny-bert", ("q", "o", "up", "down"), 3.0, 1),
    ("tiny-t5", ("q", "v", "o"), 2.0, 3),
])
def test_matches_peft_eva_init_then_outputs_gradients_and_merge(arch, targets, rho, n_batches):
    peft = pytest.importorskip("peft")
    config = eva.EvaConfig(r=4, alpha=8, rho=rho, target_modules=targets)
    batches = [batch_for(fresh(arch), seed=s) for s in range(n_batches)]
    ours = eva.apply(fresh(arch), config, data=batches)
    names = [t.name for t in find_targets(fresh(arch), targets)]
    peft_config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=names, init_lora_weights="eva",
                                  eva_config=peft.EvaConfig(rho=rho))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(fresh(arch), peft_config)
        peft.initialize_lora_eva_weights(theirs, dataloader=batches, show_progress_bar=False)
    inner = theirs.base_model.model
    ranks = {}
    for name in names:
        mine, layer = ours.get_submodule(name), inner.get_submodule(name)
        ranks[name] = mine.A.shape[0]
        assert layer.lora_A["default"].weight.shape == mine.A.shape
        torch.testing.assert_close(layer.lora_A["default"].weight, mine.A, atol=1e-5, rtol=0)
        assert layer.scaling["default"] == mine.scaling == 8 / 4  # alpha · r_l / r over r_l
    assert sum(ranks.values()) == 4 * len(names) and len(set(ranks.values())) > 1  # redistributed, same budget
    assert max(ranks.values()) <= round(rho * 4)
    assert count_trainable(ours) == sum(r * sum(ours.get_submodule(n).base.weight.shape) for n, r in ranks.items())
    assert_matches_peft(ours, theirs, names, _lora_link, mergeable=True)
