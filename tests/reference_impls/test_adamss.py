"""AdaMSS-specific promises: per-cluster updates B_k A_k inside W's frozen top-R right-singular subspace
(bias as an extra input column), scattered back to the cluster's rows; K-means equal to scikit-learn's with
peft's arguments; and peft's AdaMSS as the oracle on tiny Llama, BERT and T5 (the same clusters and Vᵀ, then
outputs, gradients, counts and merges). ASA (use_asa) is not implemented and is refused."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from impl_cases import fresh, perturb
from peft_parity import assert_matches_peft
from reference_impls import adamss
from reference_impls._core import find_targets


def _layer(bias=True, r=3, K=3, s=1, d_in=6, d_out=9):
    torch.manual_seed(0)
    layer = adamss.AdamssLinear(torch.nn.Linear(d_in, d_out, bias=bias), r=r, num_subspaces=K, subspace_rank=s)
    with torch.no_grad():
        for B in layer.B:
            B.normal_()
    return layer


@pytest.mark.parametrize("bias", [True, False])
def test_update_is_each_clusters_low_rank_map_through_the_frozen_subspace(bias):
    layer = _layer(bias=bias)
    W = layer.base.weight.detach()
    Wb = torch.cat((W, layer.base.bias.detach()[:, None]), 1) if bias else W  # (9, 6 + bias)
    assert layer.Vt.shape == (3, Wb.shape[1])
    torch.testing.assert_close(layer.Vt @ layer.Vt.T, torch.eye(3), atol=1e-5, rtol=0)  # orthonormal directions
    x = torch.randn(4, 6)
    x1 = torch.cat((x, torch.ones(4, 1)), 1) if bias else x
    expected = layer.base(x).clone()
    start = 0
    for A, B in zip(layer.A, layer.B):  # explicitly: rows of cluster k get B_k A_k Vᵀ [x; 1]
        rows = layer.rows[start:start + len(B)]
        expected[:, rows] += x1 @ (B @ A @ layer.Vt).T
        start += len(B)
    assert start == 9 and sorted(layer.rows.tolist()) == list(range(9))  # the clusters partition the rows
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-6)
    layer.merge()  # bias column folds into the bias
    torch.testing.assert_close(layer.base(x), expected, atol=1e-5, rtol=1e-5)


def test_vt_is_the_top_right_singular_subspace_and_a_the_clusters_own_directions():
    layer = _layer(bias=False, r=3, s=2)
    W = layer.base.weight.detach()
    # Vt comes from a 2-iteration randomized SVD (peft's), so it is compared with peft's, not the exact SVD
    U = W @ layer.Vt.T  # (9, 3): rows of U Σ, whose directions the clusters split
    start = 0
    for A, B in zip(layer.A, layer.B):
        rows = layer.rows[start:start + len(B)]
        start += len(B)
        assert A.shape == (min(len(rows), 2), 3)
        torch.testing.assert_close(A @ A.T, torch.eye(len(A)), atol=1e-5, rtol=0)


def test_kmeans_equals_scikit_learn_with_pefts_arguments():
    KMeans = pytest.importorskip("sklearn.cluster").KMeans
    rng = np.random.RandomState(0)
    for _ in range(20):
        X = rng.randn(rng.randint(6, 60), rng.randint(2, 12)).astype(np.float32)
        k = rng.randint(1, 6)
        expected = KMeans(n_clusters=k, init="random", n_init=1, max_iter=10, random_state=123456789).fit_predict(X)
        assert np.array_equal(adamss.kmeans(X, k), expected)


def test_starts_at_zero_update_and_counts_k_r_plus_d_out():
    layer = adamss.AdamssLinear(torch.nn.Linear(32, 16, bias=False), r=8, num_subspaces=4, subspace_rank=1)
    assert torch.equal(layer.delta_weight(), torch.zeros(16, 32))
    assert sum(p.numel() for p in layer.parameters() if p.requires_grad) - 32 * 16 == 4 * 8 + 16


def test_asa_and_conv1d_are_refused():
    from transformers.pytorch_utils import Conv1D

    with pytest.raises(NotImplementedError, match="use_asa"):
        adamss.apply(fresh("tiny-llama"), adamss.AdamssConfig(use_asa=True))
    with pytest.raises(NotImplementedError, match="nn.Linear"):
        adamss.AdamssLinear(Conv1D(8, 4), r=2, num_subspaces=2, subspace_rank=1)


def _adamss_link(mine, layer):
    return ([(a, b) for a, b in zip(mine.A, layer.adamss_A["default"])]
            + [(a, b) for a, b in zip(mine.B, layer.adamss_B["default"])])


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-t5", "tiny-llama"])
def test_matches_peft_adamss(arch):
    peft = pytest.importorskip("peft")
    pytest.importorskip("sklearn")
    config = adamss.AdamssConfig(r=8, num_subspaces=4, subspace_rank=2, target_modules=("q", "v", "up"))
    ours = adamss.apply(fresh(arch), config)
    perturb(ours)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.AdamssConfig(r=8, num_subspaces=4, subspace_rank=2,
                                                                target_modules=names))
    for name in names:  # the same subspace and the same clusters, in the same order
        mine, layer = ours.get_submodule(name), theirs.base_model.model.get_submodule(name)
        torch.testing.assert_close(mine.Vt, layer.adamss_newB["default"], atol=1e-6, rtol=0)
        assert torch.equal(mine.rows, layer.scatter_index["default"])
    ours_count = sum(min(len(B), 2) * (8 + len(B)) for n in names for B in ours.get_submodule(n).B)
    assert theirs.get_nb_trainable_parameters()[0] == ours_count  # Σ_k s_k (R + |G_k|), R = 8
    assert_matches_peft(ours, theirs, names, _adamss_link, mergeable=True)
