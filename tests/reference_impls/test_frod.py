"""FRoD-specific promises: W' = U (Λ + S) Vᵀ with W = U Λ0 Vᵀ at init, one basis shared by every layer of a
role, the sparse positions off the diagonal, and peft's FRoD as the oracle (tiny Llama, BERT and T5).

peft groups target modules by (block number, role); in T5 the encoder's and decoder's blocks share numbers and
roles, so its basis is built from the decoder's weights only. Ours reproduces that grouping, which the T5
oracle case checks (the bases, U and the positions are compared before the outputs)."""
from __future__ import annotations

import pytest
import torch

from impl_cases import fresh, perturb
from peft_parity import assert_matches_peft
from reference_impls import frod
from reference_impls._core import find_targets


def _layer(d_in=6, d_out=5, rate=0.2):
    torch.manual_seed(0)
    base = torch.nn.Linear(d_in, d_out)
    V = frod.shared_basis([base.weight.detach(), torch.randn(d_out, d_in)], alpha=1e-3)
    pos = frod.sparse_positions(d_in, rate, torch.Generator().manual_seed(0))
    return frod.FRoDLinear(base, V, pos, dropout=0.0)


def test_basis_reproduces_the_base_weight_at_init():
    layer = _layer()
    torch.testing.assert_close(layer.U @ torch.diag(layer.lam) @ layer.V.T, layer.base.weight, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.U.norm(dim=0), torch.ones(6))  # unit columns, Λ0 carries the scale


def test_adapted_weight_is_U_times_lambda_plus_sparse_S_times_V_transposed():
    layer = _layer()
    with torch.no_grad():
        layer.lam.add_(torch.randn(6))
        layer.s.normal_()
    S = torch.zeros(6, 6)
    for (i, j), value in zip(layer.positions.t().tolist(), layer.s):
        S[i, j] = value
    W_new = layer.U @ (torch.diag(layer.lam) + S) @ layer.V.T
    torch.testing.assert_close(layer.adapted_weight(), W_new)
    x = torch.randn(3, 6)
    torch.testing.assert_close(layer(x), x @ W_new.T + layer.base.bias, atol=1e-5, rtol=1e-5)
    assert torch.linalg.matrix_rank(W_new - layer.base.weight).item() == 5  # a full-rank update


def test_sparse_positions_are_off_diagonal_distinct_and_counted():
    pos = frod.sparse_positions(10, 0.05, torch.Generator().manual_seed(3))
    assert pos.shape == (2, 5)  # floor(0.05 * 100)
    assert (pos[0] != pos[1]).all()
    assert len({tuple(p) for p in pos.t().tolist()}) == 5
    assert frod.sparse_positions(10, 0.001, torch.Generator()).shape == (2, 1)  # at least one
    assert frod.sparse_positions(10, 0.0, torch.Generator()).shape == (2, 0)


def test_one_basis_per_role_shared_by_all_layers():
    model = frod.apply(fresh("tiny-llama"), frod.FRoDConfig())
    q = [m for n, m in model.named_modules() if n.endswith("q_proj")]
    v = [m for n, m in model.named_modules() if n.endswith("v_proj")]
    assert torch.equal(q[0].V, q[1].V) and torch.equal(q[0].positions, q[1].positions)
    assert not torch.equal(q[0].U, q[1].U)
    assert q[0].V.shape == v[0].V.shape and not torch.equal(q[0].V, v[0].V)


def test_role_and_layer_keys():
    assert frod.role_key("model.layers.3.self_attn.q_proj") == "self_attn_q_proj"
    assert frod.role_key("bert.encoder.layer.0.attention.output.dense") == "attention_output"
    assert frod.role_key("bert.encoder.layer.0.output.dense") == "output_dense"
    assert frod.role_key("transformer.h.1.attn.c_attn") == "attn_c_attn"
    assert frod.layer_key("model.layers.3.self_attn.q_proj", 9) == 3
    assert frod.layer_key("decoder.block.1.layer.0.SelfAttention.q", 9) == 1
    assert frod.layer_key("classifier.dense", 9) == 9


def _link(mine, layer):
    return [(mine.lam, layer.frod_lambda_l["default"]), (mine.s, layer.frod_lambda_s_values["default"])]


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-bert", "tiny-t5"])
def test_matches_peft_frod(arch):
    peft = pytest.importorskip("peft")
    config = frod.FRoDConfig(sparse_rate=0.05)
    ours = frod.apply(fresh(arch), config)
    perturb(ours)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.FrodConfig(sparse_rate=0.05, target_modules=names,
                                                              progressbar=False))
    for name in names:  # the same bases and positions, built independently
        mine, layer = ours.get_submodule(name), theirs.base_model.model.get_submodule(name)
        torch.testing.assert_close(mine.V, layer.frod_V["default"])
        torch.testing.assert_close(mine.U, layer.frod_U["default"])
        assert torch.equal(mine.positions, layer.frod_s_indices["default"])
    assert_matches_peft(ours, theirs, names, _link, mergeable=True)
