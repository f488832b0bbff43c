"""Prompt-tuning-specific promises, and peft's prompt tuning as the oracle."""
from __future__ import annotations

import pytest
import torch

from impl_cases import batch_for, fresh, logits, perturb
from reference_impls import prompt_tuning as pt
from reference_impls._core import count_trainable

ATOL, RTOL = 1e-4, 1e-4  # float32 logits of magnitude ~5 along different summation orders (see test_common)


def test_vocab_init_copies_rows_of_the_embedding_matrix():
    model = pt.apply(fresh("tiny-llama"), pt.PromptTuningConfig(n_virtual_tokens=5))
    E = model.model.get_input_embeddings().weight
    for row in model.prompt:
        assert (E == row).all(dim=1).any()


def test_labels_init_cycles_through_the_given_tokens():
    model = pt.apply(fresh("tiny-gpt2"), pt.PromptTuningConfig(n_virtual_tokens=3, init="labels", init_token_ids=(7, 9)))
    E = model.model.get_input_embeddings().weight
    assert torch.equal(model.prompt, E[[7, 9, 7]])


def test_decoder_logits_cover_prompt_and_input_and_prompt_is_never_a_target():
    model = pt.apply(fresh("tiny-llama"), pt.PromptTuningConfig(n_virtual_tokens=4))
    batch = batch_for(model)
    out = model(**batch)
    assert out.logits.shape == (4, 4 + 12, 100)
    # targets are the real tokens only; the last prompt position predicts the first of them
    V = out.logits.shape[-1]
    expected = torch.nn.functional.cross_entropy(out.logits[:, 3:-1].reshape(-1, V), batch["labels"].reshape(-1))
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=1e-5)


def test_t5_prompt_goes_to_the_encoder_only():
    model = pt.apply(fresh("tiny-t5"), pt.PromptTuningConfig(n_virtual_tokens=4))
    batch = batch_for(model)
    assert model(**batch).logits.shape == (4, 12, 100)  # decoder length = label length


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-gpt2"])
def test_matches_peft_count_outputs_and_loss(arch):
    peft = pytest.importorskip("peft")
    config = pt.PromptTuningConfig(n_virtual_tokens=4)
    ours = pt.apply(fresh(arch), config)
    perturb(ours)
    theirs = peft.get_peft_model(fresh(arch), peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    assert theirs.get_nb_trainable_parameters()[0] == count_trainable(ours)
    with torch.no_grad():
        theirs.prompt_encoder["default"].embedding.weight.copy_(ours.prompt)
    batch = batch_for(ours)
    torch.testing.assert_close(logits(ours, batch), logits(theirs, batch), atol=ATOL, rtol=RTOL)
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).loss, theirs(**batch).loss, atol=ATOL, rtol=RTOL)


def test_logits_are_the_frozen_models_on_the_prompt_prepended_embeddings():
    """X' = [P; E(x)] with ones prepended to the mask, fed to the unchanged model."""
    base = fresh("tiny-llama")
    model = pt.apply(fresh("tiny-llama"), pt.PromptTuningConfig(n_virtual_tokens=3, init="random"))
    batch = batch_for(model)
    B = batch["input_ids"].shape[0]
    x = torch.cat([model.prompt.expand(B, -1, -1), base.get_input_embeddings()(batch["input_ids"])], dim=1)
    mask = torch.cat([torch.ones(B, 3, dtype=batch["attention_mask"].dtype), batch["attention_mask"]], dim=1)
    expected = base(inputs_embeds=x, attention_mask=mask).logits
    torch.testing.assert_close(model(**batch).logits, expected, atol=1e-5, rtol=1e-5)
    assert model.prompt.abs().max() <= 0.5  # the paper's random init U(-0.5, 0.5)
