"""Kernel-mix-specific promises: the updates are kernel-wise (one per head), the value update is computed
from the same head's key, and all of it folds into W_q, W_v, W_o."""
from __future__ import annotations

import pytest
import torch

from impl_cases import prepare
from reference_impls import kernel_mix

H, D_HEAD, D = 4, 8, 32


def _layers(model, cls):
    return [m for m in model.modules() if isinstance(m, cls)]


def test_each_query_head_has_its_own_update():
    _, model, _ = prepare("kernel-mix", "tiny-bert")
    q = _layers(model, kernel_mix.KernelMixQuery)[0]
    x = torch.randn(2, 5, D)
    before = q.kernel_update(x)
    with torch.no_grad():
        q.A[1].add_(1.0)  # head 1's own factors
        q.B[1].add_(1.0)
    changed = (q.kernel_update(x) - before).abs().amax(dim=(0, 1)) > 0  # (d_out,)
    expected = torch.zeros(H * D_HEAD, dtype=torch.bool)
    expected[D_HEAD:2 * D_HEAD] = True
    assert torch.equal(changed, expected)


def test_query_update_is_per_head_plus_shared_plus_bias_by_hand():
    _, model, _ = prepare("kernel-mix", "tiny-bert")
    q = _layers(model, kernel_mix.KernelMixQuery)[0]
    x = torch.randn(2, 5, D)
    own = torch.cat([x @ (q.B[h] @ q.A[h]).T for h in range(H)], -1)  # head h's rows: B^Q_h A^Q_h x
    expected = own + x @ (q.B_s @ q.A_s).T + q.b
    torch.testing.assert_close(q(x) - q.base(x), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-llama"])
def test_value_update_is_computed_from_the_same_heads_key(arch):
    _, model, _ = prepare("kernel-mix", arch)
    v = _layers(model, kernel_mix.KernelMixValue)[0]
    x = torch.randn(2, 5, D)
    k = v.key(x)  # (B, T, H_kv * d_head), the frozen key projection
    n_kv = v.A.shape[0]
    expected = torch.cat([k[..., h * D_HEAD:(h + 1) * D_HEAD] @ (v.B[h] @ v.A[h]).T for h in range(n_kv)], -1)
    expected = expected + x @ (v.B_s @ v.A_s).T + v.b
    torch.testing.assert_close(v(x) - v.base(x), expected, atol=1e-6, rtol=1e-5)


def test_output_update_is_blockwise_in_the_heads():
    _, model, _ = prepare("kernel-mix", "tiny-llama")
    o = _layers(model, kernel_mix.KernelMixOutput)[0]
    a = torch.randn(3, D)
    z = torch.cat([a[:, h * D_HEAD:(h + 1) * D_HEAD] @ o.A[h].T for h in range(H)], -1)  # (3, H * r_v)
    torch.testing.assert_close(o.kernel_update(a[:, None])[:, 0], z @ o.B.T, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-llama"])
def test_every_module_merges_into_weight_and_bias(arch):
    _, model, _ = prepare("kernel-mix", arch)
    x = torch.randn(2, 5, D)
    for m in _layers(model, kernel_mix.KernelMixLinear):
        with torch.no_grad():
            for p in (m.A, m.B, m.A_s, m.B_s, m.b):
                p.normal_()  # make the update large, so merging it wrongly could not go unnoticed
            unmerged = m(x)
            m.merge()
            torch.testing.assert_close(m(x), unmerged, atol=1e-4, rtol=1e-4)
            m.unmerge()


def test_gpt2_fused_qkv_is_refused():
    with pytest.raises(ValueError, match="fused"):
        prepare("kernel-mix", "tiny-gpt2")
