"""Trainable-Tokens-specific promises: only the chosen rows of the embedding change, a tied output layer reads
the same rows; peft's TrainableTokensModel as the oracle."""
from __future__ import annotations

import pytest
import torch

from impl_cases import batch_for, fresh, perturb, prepare, run_training
from peft_parity import assert_matches_peft
from reference_impls import trainable_tokens as tt
from reference_impls._core import count_trainable, merge


def test_only_the_chosen_rows_differ_from_the_base_embedding():
    emb = torch.nn.Embedding(10, 4)
    layer = tt.TrainableTokensEmbedding(emb, torch.tensor([2, 7]))
    with torch.no_grad():
        layer.rows.add_(1.0)
    ids = torch.arange(10)
    expected = emb.weight.detach().clone()
    expected[[2, 7]] += 1.0
    torch.testing.assert_close(layer(ids), expected)


def test_default_selection_is_the_last_ids_and_bad_selections_are_refused():
    assert tt.token_ids(tt.TrainableTokensConfig(n_tokens=3), 10).tolist() == [7, 8, 9]
    assert tt.token_ids(tt.TrainableTokensConfig(token_indices=(5, 1)), 10).tolist() == [1, 5]
    for config, message in [(tt.TrainableTokensConfig(), "no token selected"),
                            (tt.TrainableTokensConfig(n_tokens=3, token_indices=(1,)), "n_tokens=3 but 1"),
                            (tt.TrainableTokensConfig(token_indices=(1, 1)), "distinct"),
                            (tt.TrainableTokensConfig(token_indices=(10,)), "distinct and in 0..9")]:
        with pytest.raises(ValueError, match=message):
            tt.token_ids(config, 10)


@pytest.mark.parametrize("arch", ["tiny-gpt2", "tiny-llama"])
def test_tied_output_layer_reads_the_trained_rows_and_merge_touches_only_them(arch):
    _, model, config = prepare("trainable-tokens", arch)
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    tied = arch == "tiny-gpt2"
    assert isinstance(out, tt.TrainableTokensEmbedding) == tied and (not tied or out.rows is inp.rows)
    assert count_trainable(model) == 32 * 32
    before = inp.base.weight.detach().clone()
    run_training("trainable-tokens", model, config, steps=3)
    merge(model)
    changed = set((inp.base.weight != before).any(dim=1).nonzero().flatten().tolist())
    # untied: exactly the chosen rows that occur in the input before its last position (a causal LM's last
    # position predicts nothing, so its embedding gets no gradient); tied: the output layer trains every chosen row
    in_batch = set(batch_for(model)["input_ids"][:, :-1].flatten().tolist()) & set(range(68, 100))
    assert changed == (set(range(68, 100)) if tied else in_batch) and len(in_batch) > 10


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-t5", "tiny-llama", "tiny-gpt2"])
def test_matches_peft_trainable_tokens(arch):
    peft = pytest.importorskip("peft")
    config = tt.TrainableTokensConfig(token_indices=(3, 40, 97))
    ours = tt.apply(fresh(arch), config)
    perturb(ours)
    theirs = peft.get_peft_model(fresh(arch), peft.TrainableTokensConfig(token_indices=[3, 40, 97]))
    name = next(n for n, m in ours.named_modules() if m is ours.get_input_embeddings())
    link = lambda m, layer: [(m.rows, layer.trainable_tokens_delta["default"])]  # noqa: E731
    assert_matches_peft(ours, theirs, [name], link, mergeable=True)
