"""GraLoRA-specific promises: the blockwise update (each k × k block a rank-r/k product) equals the forward,
the rank reaches k r with LoRA's count, the hybrid part; peft's GraLoRA as the oracle."""
from __future__ import annotations

import pytest
import torch

from impl_cases import fresh, perturb
from peft_parity import assert_matches_peft
from reference_impls import gralora
from reference_impls._core import find_targets


def _layer(d_in=8, d_out=12, r=4, k=2, hybrid_r=0, alpha=8):
    torch.manual_seed(0)
    layer = gralora.GraLoRALinear(torch.nn.Linear(d_in, d_out), r=r, k=k, hybrid_r=hybrid_r, alpha=alpha)
    with torch.no_grad():
        for p in layer.parameters():
            if p.requires_grad:
                p.normal_()
    return layer


def test_each_block_sees_only_its_input_slice_through_its_own_rank_r_over_k_factors():
    layer = _layer(d_in=8, d_out=12, r=4, k=2)
    # block (j=1, n=0): output rows 6..11, input columns 0..3, via chunk 1 of A[0] and chunk 0 of B[1]
    expected = layer.B[1, 0:2].T @ layer.A[0][:, 2:4].T * (8 / 4)
    torch.testing.assert_close(layer.delta_weight()[6:12, 0:4], expected)
    assert torch.linalg.matrix_rank(layer.delta_weight()[6:12, 0:4]).item() == 2
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(layer(x), layer.base(x) + x @ layer.delta_weight().T, atol=1e-5, rtol=1e-5)


def test_rank_reaches_k_times_r_with_lora_count():
    layer = _layer(d_in=16, d_out=16, r=4, k=2)
    assert sum(p.numel() for p in [layer.A, layer.B]) == 4 * (16 + 16)
    assert torch.linalg.matrix_rank(layer.delta_weight()).item() == 8  # a rank-4 LoRA: at most 4


def test_hybrid_part_is_an_ordinary_lora_sharing_the_scale():
    layer = _layer(hybrid_r=2)
    plain = layer.delta_weight() - (8 / 6) * layer.B_h @ layer.A_h
    layer.hybrid = False
    torch.testing.assert_close(plain, layer.delta_weight(), atol=1e-5, rtol=1e-5)


def test_k_must_divide_dims_and_rank():
    with pytest.raises(ValueError, match="k = 3"):
        gralora.GraLoRALinear(torch.nn.Linear(8, 12), r=4, k=3, hybrid_r=0, alpha=8)


def _gralora_link(mine, layer):
    pairs = [(mine.A, layer.gralora_A["default"]), (mine.B, layer.gralora_B["default"])]
    if mine.hybrid:
        pairs += [(mine.A_h, layer.gralora_A_general["default"].weight),
                  (mine.B_h, layer.gralora_B_general["default"].weight)]
    return pairs


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch,hybrid_r", [("tiny-bert", 0), ("tiny-t5", 0), ("tiny-llama", 0), ("tiny-llama", 2),
                                           ("tiny-gpt2", 0)])
def test_matches_peft_gralora(arch, hybrid_r):
    peft = pytest.importorskip("peft")
    config = gralora.GraLoRAConfig(r=4, k=2, hybrid_r=hybrid_r, alpha=8)
    ours = gralora.apply(fresh(arch), config)
    perturb(ours)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.GraloraConfig(
        r=4, gralora_k=2, hybrid_r=hybrid_r, alpha=8, target_modules=names, fan_in_fan_out=arch == "tiny-gpt2"))
    assert_matches_peft(ours, theirs, names, _gralora_link, mergeable=True)
