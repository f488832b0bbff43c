"""LoRA+-specific promises: B learns lr_ratio times faster than A; the training hooks are exactly Adam with the
two parameter groups; peft's create_loraplus_optimizer as the oracle for a few Adam steps."""
from __future__ import annotations

import copy

import pytest
import torch

from impl_cases import batch_for, copy_lora_into_peft, fresh, logits, perturb, run_training
from reference_impls import lora_plus
from reference_impls._core import count_trainable, find_targets

CONFIG = lora_plus.LoRAPlusConfig(r=4, alpha=8, lr_ratio=16)
STEPS, LR = 3, 1e-3


def _adam_loop(model, optimizer, batch, steps):
    model.train()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        optimizer.step()
    model.eval()


def _model(arch):
    model = lora_plus.apply(fresh(arch), CONFIG)
    perturb(model)
    return model


def test_param_groups_put_every_A_at_lr_and_every_B_at_ratio_times_lr():
    model = _model("tiny-llama")
    groups = lora_plus.param_groups(model, lr=LR, lr_ratio=16)
    A, B = lora_plus._factors(model)
    assert [g["lr"] for g in groups] == [LR, 16 * LR]
    assert groups[0]["params"] == A and groups[1]["params"] == B
    assert sum(p.numel() for g in groups for p in g["params"]) == count_trainable(model)


def test_training_hooks_are_exactly_adam_with_the_two_groups():
    ours = _model("tiny-llama")
    reference = copy.deepcopy(ours)
    run_training("lora-plus", ours, CONFIG, steps=STEPS, lr=LR)
    _adam_loop(reference, torch.optim.Adam(lora_plus.param_groups(reference, LR, 16)), batch_for(reference), STEPS)
    for p, q in zip(ours.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
    # and the ratio matters: plain Adam at one learning rate moves B less
    plain = _model("tiny-llama")
    _adam_loop(plain, torch.optim.Adam([p for p in plain.parameters() if p.requires_grad], lr=LR),
               batch_for(plain), STEPS)
    B0 = lora_plus._factors(_model("tiny-llama"))[1][0]
    moved_plus = (lora_plus._factors(ours)[1][0] - B0).abs().max()
    moved_plain = (lora_plus._factors(plain)[1][0] - B0).abs().max()
    assert moved_plus > 10 * moved_plain


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-llama"])
def test_matches_peft_loraplus_optimizer(arch):
    peft = pytest.importorskip("peft")
    from peft.optimizers import create_loraplus_optimizer

    ours = _model(arch)
    names = [t.name for t in find_targets(fresh(arch), CONFIG.target_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                              target_modules=names))
    copy_lora_into_peft(ours, theirs, names)
    assert theirs.get_nb_trainable_parameters()[0] == count_trainable(ours)
    optimizer = create_loraplus_optimizer(theirs, torch.optim.Adam, lr=LR, loraplus_lr_ratio=16)
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    inner = theirs.base_model.model
    for name in names:
        layer = inner.get_submodule(name)
        assert lrs[id(layer.lora_A["default"].weight)] == LR and lrs[id(layer.lora_B["default"].weight)] == 16 * LR
    batch = batch_for(ours)
    run_training("lora-plus", ours, CONFIG, steps=STEPS, lr=LR)
    _adam_loop(theirs, optimizer, batch, STEPS)
    for name in names:
        mine, layer = ours.get_submodule(name), inner.get_submodule(name)
        torch.testing.assert_close(mine.A, layer.lora_A["default"].weight, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(mine.B, layer.lora_B["default"].weight, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(logits(ours, batch), logits(theirs, batch), atol=1e-5, rtol=1e-5)
