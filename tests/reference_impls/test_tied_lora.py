"""Tied-LoRA: the tied factors and the per-block scaling vectors, recomputed from the paper's equation.

peft 0.21.2 has no Tied-LoRA tuner, so there is no peft-equivalence test; the generic cases
(cases_wave4_e.py: count = catalog formula, identity at init, merge, loss goes down, save/load) and the
explicit re-computation below stand in for it.
"""
from __future__ import annotations

import pytest
import torch

from impl_cases import batch_for, fresh, perturb
from reference_impls import tied_lora
from reference_impls._core import arch_symbols, count_trainable, find_targets

R, ALPHA = 4, 8.0  # s = alpha / r = 2: dropping the scale changes the result


def _adapted(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = tied_lora.apply(fresh(arch), tied_lora.TiedLoRAConfig(r=R, alpha=ALPHA))
    perturb(model, seed=3, std=0.3)  # B, u and v off their init, so every factor matters
    return model


def _wrappers(model: torch.nn.Module) -> list[tied_lora.TiedLoRALinear]:
    return [m for m in model.modules() if isinstance(m, tied_lora.TiedLoRALinear)]


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-gpt2"])
def test_fused_update_is_s_diag_v_B_diag_u_A(arch):
    """Per attention block, the q, k, v updates stacked row-wise equal s diag(v_l) B diag(u_l) A, with one
    A and B for the whole model and u_l, v_l of that block."""
    model = _adapted(arch)
    wrappers = _wrappers(model)
    A, B = wrappers[0].factors.A.detach(), wrappers[0].factors.B.detach()
    assert all(w.factors.A is wrappers[0].factors.A and w.factors.B is wrappers[0].factors.B for w in wrappers)
    blocks: dict[int, list] = {}
    for w in wrappers:
        blocks.setdefault(id(w.scales), []).append(w)
    s = arch_symbols(model.config)
    assert len(blocks) == s["n_layers"]
    us = []
    for ws in blocks.values():
        u, v = ws[0].scales.u.detach(), ws[0].scales.v.detach()
        us.append(u)
        expected = (ALPHA / R) * torch.diag(v) @ B @ torch.diag(u) @ A  # (d_qkv, d_model)
        stacked = torch.cat([w.delta_weight().detach() for w in ws], dim=0)
        torch.testing.assert_close(stacked, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(us[0], us[1])  # each block has its own u


def test_forward_adds_the_tied_update_on_llama():
    """h = W0 x + s v_l ⊙ B_rows (u_l ⊙ A x) for the k projection (the middle row block under GQA)."""
    model = _adapted("tiny-llama")
    name = next(t.name for t in find_targets(fresh("tiny-llama"), ["k"]))
    k = model.get_submodule(name)
    s = arch_symbols(model.config)
    lo, hi = s["n_heads"] * s["d_head"], (s["n_heads"] + s["n_kv_heads"]) * s["d_head"]
    assert (k.rows.start, k.rows.stop) == (lo, hi)
    x = torch.randn(2, 5, s["d_model"], generator=torch.Generator().manual_seed(0))
    A, B = k.factors.A.detach(), k.factors.B.detach()
    u, v = k.scales.u.detach(), k.scales.v.detach()
    expected = k.base(x) + (ALPHA / R) * v[lo:hi] * ((u * (x @ A.T)) @ B[lo:hi].T)
    with torch.no_grad():
        torch.testing.assert_close(k(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-bert"])
def test_count_is_one_pair_plus_per_block_vectors(arch):
    model = _adapted(arch)
    s = arch_symbols(model.config)
    d_qkv = (s["n_heads"] + 2 * s["n_kv_heads"]) * s["d_head"]
    assert count_trainable(model) == R * (s["d_model"] + d_qkv) + s["n_layers"] * (R + d_qkv)


def test_tied_A_gets_gradient_from_more_than_one_block():
    """Tying: the one A receives gradient through every block; cutting all blocks but the first (u = 0
    there) changes A's gradient."""
    model = _adapted("tiny-llama")
    out = model(**batch_for(model))
    out.loss.backward()
    A = _wrappers(model)[0].factors.A
    assert A.grad is not None and A.grad.abs().sum() > 0
    full = A.grad.clone()
    model.zero_grad()
    with torch.no_grad():
        for w in _wrappers(model)[3:]:
            w.scales.u.zero_()
    model(**batch_for(model)).loss.backward()
    assert not torch.allclose(full, A.grad)


def test_blocks_of_different_shapes_are_refused():
    with pytest.raises(ValueError, match="tied-lora"):
        tied_lora.apply(fresh("tiny-llama"), tied_lora.TiedLoRAConfig(r=R, target_modules=("q", "o", "up")))
