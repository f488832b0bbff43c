"""IDPG-specific promises: the prompt is generated per input from the frozen model's sentence representation."""
from __future__ import annotations

import pytest
import torch

from impl_cases import batch_for, fresh, perturb
from reference_impls import idpg
from reference_impls._core import train


def _model(arch: str = "tiny-bert") -> idpg.IdpgModel:
    return idpg.apply(fresh(arch), idpg.IdpgConfig(n_virtual_tokens=3, generator_hidden=8))


@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-t5", "tiny-llama"])
def test_prompt_is_the_generator_applied_to_the_frozen_models_sentence_representation(arch):
    model = _model(arch)
    perturb(model)
    batch = batch_for(model)
    mask = batch["attention_mask"].clone()
    mask[0, -4:] = 0  # padding is left out of the mean
    with torch.no_grad():
        if arch == "tiny-t5":
            h = model.model.encoder(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state
        else:
            out = model.model(input_ids=batch["input_ids"], attention_mask=mask, output_hidden_states=True)
            h = out.hidden_states[-1]
        if arch == "tiny-llama":  # decoder-only: the mean over the real tokens
            m = torch.stack([h[b, mask[b].bool()].mean(0) for b in range(4)])  # (4, 32)
        else:  # bidirectional encoders: the first token's state
            m = h[:, 0]
        g = model.generator
        expected = (g.up.weight @ torch.nn.functional.gelu(g.down.weight @ m.T + g.down.bias[:, None]) + g.up.bias[:, None]).T
        got = model.prompt(batch["input_ids"], torch.zeros(4, 12, 32), mask)
    torch.testing.assert_close(got, expected.reshape(4, 3, 32), atol=1e-5, rtol=1e-5)


def test_starts_instance_independent_and_becomes_instance_dependent():
    model = _model()
    batch = batch_for(model)
    with torch.no_grad():
        start = model.prompt(batch["input_ids"], torch.zeros(4, 12, 32), batch["attention_mask"])
    assert torch.equal(start[0], start[1])  # W_2 = 0: the same vocab-initialised prompt for every input
    train(model, batch, steps=5, lr=0.05)
    with torch.no_grad():
        after = model.prompt(batch["input_ids"], torch.zeros(4, 12, 32), batch["attention_mask"])
    assert (after[0] - after[1]).abs().max() > 1e-3  # different inputs, different prompts


def test_unknown_pooling_is_rejected():
    model = idpg.apply(fresh("tiny-bert"), idpg.IdpgConfig(n_virtual_tokens=2, generator_hidden=4,
                                                           sentence_pooling="max"))
    with pytest.raises(ValueError):
        model(**batch_for(model))


def test_no_gradient_flows_into_the_sentence_encoder_pass():
    model = _model("tiny-llama")
    out = model(**batch_for(model))
    out.loss.backward()
    assert model.generator.down.weight.grad is not None
    assert all(p.grad is None for p in model.model.parameters())
