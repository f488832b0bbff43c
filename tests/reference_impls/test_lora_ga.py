"""LoRA-GA-specific promises: A and B are the gradient's singular components (ArB2r, stable scale), the frozen
weight is offset so the model starts unchanged, and peft's lora_ga init (same weights, same data) agrees up to
the sign of each singular vector; then peft is the oracle for outputs, gradients and merge."""
from __future__ import annotations


import pytest
import torch

from impl_cases import batch_for, fresh, logits
from peft_parity import assert_matches_peft
from reference_impls import lora_ga
from reference_impls._core import find_targets

CONFIG = lora_ga.LoRAGAConfig(r=4, alpha=8)


def _gradient(arch, name):
    model = fresh(arch)
    model.train()
    model(**batch_for(model)).loss.backward()
    return model.get_submodule(name).weight.grad  # (d_out, d_in) for nn.Linear


def test_A_and_B_are_the_gradient_singular_components_and_the_model_starts_unchanged():
    base = fresh("tiny-llama")
    model = lora_ga.apply(fresh("tiny-llama"), CONFIG)
    name = "model.layers.0.self_attn.q_proj"
    G = _gradient("tiny-llama", name)
    U, S, Vh = torch.linalg.svd(G)
    layer = model.get_submodule(name)
    zeta = 32 ** 0.25 / 16 ** 0.5
    signs_A = torch.sign((layer.A * Vh[:4]).sum(1))
    torch.testing.assert_close(layer.A, signs_A[:, None] * Vh[:4], atol=1e-5, rtol=0)
    signs_B = torch.sign((layer.B * U[:, 4:8]).sum(0))
    torch.testing.assert_close(layer.B, signs_B * zeta * U[:, 4:8] * S[4:8], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(layer.base.weight + layer.delta_weight(), base.get_submodule(name).weight,
                               atol=1e-6, rtol=0)
    batch = batch_for(base)
    torch.testing.assert_close(logits(model, batch), logits(base, batch), atol=1e-5, rtol=1e-5)


def test_directions_and_bad_rank():
    for direction in lora_ga.DIRECTIONS:
        lora_ga.apply(fresh("tiny-bert"), lora_ga.LoRAGAConfig(r=4, direction=direction))
    with pytest.raises(ValueError, match="direction"):
        lora_ga.apply(fresh("tiny-bert"), lora_ga.LoRAGAConfig(r=4, direction="BrAr"))
    with pytest.raises(ValueError, match="2r"):
        lora_ga.apply(fresh("tiny-llama"), lora_ga.LoRAGAConfig(r=12))  # v_proj is 16 x 32


def _link(mine, layer):
    return [(mine.A, layer.lora_A["default"].weight), (mine.B, layer.lora_B["default"].weight)]


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-llama"])
def test_matches_peft_lora_ga_init_and_then_outputs_gradients_and_merge(arch):
    peft = pytest.importorskip("peft")
    from peft.tuners.lora import LoraGAConfig, preprocess_loraga

    names = [t.name for t in find_targets(fresh(arch), CONFIG.target_modules)]
    ours = lora_ga.apply(fresh(arch), CONFIG)
    theirs_base = fresh(arch)
    peft_config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=names,
                                  init_lora_weights="lora_ga", lora_ga_config=LoraGAConfig())
    batch = batch_for(theirs_base)
    preprocess_loraga(theirs_base, peft_config, lambda: theirs_base(**batch).loss.backward())
    theirs = peft.get_peft_model(theirs_base, peft_config)
    inner = theirs.base_model.model
    for name in names:
        mine, layer = ours.get_submodule(name), inner.get_submodule(name)
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        sA = torch.sign((A * mine.A).sum(1))  # each singular vector up to its sign
        sB = torch.sign((B * mine.B).sum(0))
        torch.testing.assert_close(A, sA[:, None] * mine.A, atol=1e-4, rtol=0)
        torch.testing.assert_close(B, sB * mine.B, atol=1e-4, rtol=1e-3)
        # peft offsets its frozen weight by its own product, as we do
        W0 = fresh(arch).get_submodule(name).weight
        torch.testing.assert_close(layer.base_layer.weight + layer.get_delta_weight("default"), W0, atol=1e-6, rtol=0)
        with torch.no_grad():  # same frozen weight on both sides for the comparisons below
            layer.base_layer.weight.copy_(mine.base.weight)
    assert_matches_peft(ours, theirs, names, _link, mergeable=True)
