"""VB-LoRA-specific promises: each sub-vector of A and B is a softmax-weighted mixture of the top-k bank
vectors, the bank is one parameter shared by every layer; peft's VBLoRAModel as the oracle."""
from __future__ import annotations

import pytest
import torch

from impl_cases import fresh, perturb, prepare
from peft_parity import assert_matches_peft
from reference_impls import vblora
from reference_impls._core import count_trainable, find_targets, linear_dims


def test_sub_vectors_are_top_k_softmax_mixtures_of_the_bank():
    bank = torch.randn(5, 3)
    logits = torch.tensor([[0.1, 2.0, -1.0, 1.5, 0.0]])
    w = torch.softmax(torch.tensor([2.0, 1.5]), dim=0)
    torch.testing.assert_close(vblora.admix(logits, bank, 2), (w[0] * bank[1] + w[1] * bank[3])[None])


def test_factors_are_assembled_from_sub_vectors():
    bank = torch.nn.Parameter(torch.randn(6, 2))
    layer = vblora.VBLoRALinear(torch.nn.Linear(4, 6), "x", bank, r=2, topk=2, logits_std=1.0)
    A, B = layer.factors()
    assert A.shape == (2, 4) and B.shape == (6, 2)
    # A's row 1, second half (input features 2..3) is sub-vector (1, 1); B's column 0, features 4..5, is (2, 0)
    torch.testing.assert_close(A[1, 2:4], vblora.admix(layer.logits_A[1, 1], bank, 2))
    torch.testing.assert_close(B[4:6, 0], vblora.admix(layer.logits_B[2, 0], bank, 2))
    x = torch.randn(3, 4)
    torch.testing.assert_close(layer(x), layer.base(x) + x @ (B @ A).T, atol=1e-6, rtol=1e-6)


def test_bank_is_shared_and_counted_once():
    config = vblora.VBLoRAConfig(r=4, num_vectors=16, vector_length=8)
    _, model, _ = prepare("vblora", "tiny-llama", config=config)
    layers = [m for m in model.modules() if isinstance(m, vblora.VBLoRALinear)]
    assert all(m.bank is layers[0].bank for m in layers) and layers[0].bank.requires_grad
    per_layer = sum(4 * 16 * sum(linear_dims(m.base)) // 8 for m in layers)
    assert count_trainable(model) == per_layer + 16 * 8


def test_vector_length_must_divide_the_widths():
    with pytest.raises(ValueError, match="vector_length 3 must divide d_in = 4"):
        vblora.VBLoRALinear(torch.nn.Linear(4, 6), "x", torch.nn.Parameter(torch.zeros(5, 3)), 2, 2, 0.1)


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-t5", "tiny-llama", "tiny-gpt2"])
def test_matches_peft_vblora(arch):
    peft = pytest.importorskip("peft")
    config = vblora.VBLoRAConfig(r=4, num_vectors=16, vector_length=8)
    ours = vblora.apply(fresh(arch), config)
    perturb(ours)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.VBLoRAConfig(
        r=4, num_vectors=16, vector_length=8, topk=2, target_modules=names, fan_in_fan_out=arch == "tiny-gpt2"))
    first = names[0]
    bank = ours.get_submodule(first).bank

    def link(mine, layer):  # the logits of every layer, and the shared bank once (with the first layer)
        pairs = [(mine.logits_A, layer.vblora_logits_A["default"]), (mine.logits_B, layer.vblora_logits_B["default"])]
        return pairs + ([(bank, layer.vblora_vector_bank["default"])] if mine is ours.get_submodule(first) else [])

    assert_matches_peft(ours, theirs, names, link, mergeable=True)
