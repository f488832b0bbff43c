"""CPT-specific promises: the loss over the context's and the query's labels with exponentially decaying
weights, the projection of each token's delta into its ε-ball, label tokens never changing; peft's CPT as
the oracle on tiny Llama (peft builds CPT for causal LMs only; BERT and T5 have no comparison)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from impl_cases import batch_for, formula_count, fresh
from reference_impls import cpt
from reference_impls._core import count_trainable, train

IDS, TYPES = (5, 6, 7, 8, 9, 10, 11, 12), (1, 2, 3, 4, 5, 6, 7, 8)  # two complete examples


def _model(arch="tiny-llama", **kw):
    config = cpt.CPTConfig(n_virtual_tokens=8, token_ids=IDS, type_mask=TYPES, **kw)
    torch.manual_seed(0)
    return cpt.apply(fresh(arch), config), config


def test_decayed_loss_weighs_each_examples_labels_by_its_recency():
    model, _ = _model(weighted_loss="decay", loss_decay_factor=0.5)
    with torch.no_grad():
        model.delta.normal_()
    batch = batch_for(model)
    out = model(**batch)
    lp = F.log_softmax(out.logits, dim=-1)  # (B, 8 + 12, V)
    labels = batch["labels"]
    total, count = 0.0, 0
    for b in range(labels.shape[0]):
        # context labels: token 8 at position 3 (example 1, weight 0.5²), token 12 at 7 (example 2, 0.5);
        # every query token after the first is a label of example 3 (weight 1), predicted from the position before
        terms = [(0.25, 2, 8), (0.5, 6, 12)] + [(1.0, 8 + t - 1, int(labels[b, t])) for t in range(1, 12)]
        terms.append((1.0, 7, int(labels[b, 0])))  # the query's first token, predicted from the context's last
        for w, pos, token in terms:
            total += -w * lp[b, pos, token]
            count += 1
    torch.testing.assert_close(out.loss, total / count, atol=1e-5, rtol=1e-5)


def test_projection_keeps_each_delta_in_its_ball_and_labels_unchanged():
    model, _ = _model(epsilon=0.2, format_epsilon=0.1)
    r = math.sqrt(32 / 2048)
    with torch.no_grad():
        model.delta.copy_(torch.randn(8, 32, generator=torch.Generator().manual_seed(0)))
        model.delta[0] *= 1e-3  # already inside its ball: left alone
    before = model.delta.detach().clone()
    model.project_()
    norms = model.delta.norm(dim=1)
    radius = torch.tensor([0.1, 0.2, 0.1, 0.0, 0.1, 0.2, 0.1, 0.0]) * r  # template, input, template, label
    torch.testing.assert_close(norms[1:], radius[1:].where(radius[1:] > 0, torch.zeros(7)), atol=1e-6, rtol=1e-5)
    assert torch.equal(model.delta[0], before[0])
    cos = F.cosine_similarity(model.delta[[1, 2, 5]], before[[1, 2, 5]], dim=1)  # shrunk, not turned
    torch.testing.assert_close(cos, torch.ones(3))


def test_label_tokens_get_no_gradient_and_training_stays_in_the_balls():
    model, config = _model()
    losses = train(model, batch_for(model), steps=3, lr=0.1, **cpt.training_hooks(model, config))
    assert losses[-1] != losses[0]
    assert torch.equal(model.delta[[3, 7]], torch.zeros(2, 32))  # the two labels
    assert (model.delta.norm(dim=1) <= model.epsilon + 1e-7).all()
    assert (model.delta[[0, 1, 2, 4, 5, 6]].norm(dim=1) > 0).all()


def test_count_is_one_delta_per_context_token():
    model, config = _model()
    assert count_trainable(model) == 8 * 32 == formula_count("cpt", fresh("tiny-llama"), config)


@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-t5"])
def test_non_causal_models_are_refused(arch):
    with pytest.raises(ValueError, match="causal"):
        cpt.apply(fresh(arch), cpt.CPTConfig())


@pytest.mark.peft_oracle
@pytest.mark.parametrize("weighted", ["none", "decay"])
def test_matches_peft_outputs_loss_gradients_and_projected_step(weighted):
    peft = pytest.importorskip("peft")
    ours, config = _model(weighted_loss=weighted, loss_decay_factor=0.7, epsilon=2.0, format_epsilon=1.0)
    theirs = peft.get_peft_model(fresh("tiny-llama"), peft.CPTConfig(
        task_type="CAUSAL_LM", cpt_token_ids=list(IDS), cpt_mask=[1] * 8, cpt_tokens_type_mask=list(TYPES),
        opt_weighted_loss_type=weighted, opt_loss_decay_factor=0.7, opt_projection_epsilon=2.0,
        opt_projection_format_epsilon=1.0))
    assert theirs.get_nb_trainable_parameters()[0] == count_trainable(ours)
    encoder = theirs.prompt_encoder["default"]
    torch.testing.assert_close(encoder.embedding.weight, ours.context)
    with torch.no_grad():  # a delta inside the balls (peft projects at the start of every forward)
        ours.delta.copy_(0.01 * torch.randn(8, 32, generator=torch.Generator().manual_seed(1)))
        ours.delta[[3, 7]] = 0  # labels: peft's projection radius 1e-10 keeps them at 0
        encoder.delta_embedding.weight.copy_(ours.delta)
    batch = batch_for(ours)
    for model in (ours, theirs):
        model.eval()
        model.zero_grad(set_to_none=True)
    out_ours, out_theirs = ours(**batch), theirs(**batch)
    torch.testing.assert_close(out_ours.logits, out_theirs.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_ours.loss, out_theirs.loss, atol=1e-5, rtol=1e-5)
    out_ours.loss.backward()
    out_theirs.loss.backward()
    torch.testing.assert_close(ours.delta.grad, encoder.delta_embedding.weight.grad, atol=1e-5, rtol=1e-4)

    # one large SGD step leaves the balls; our after-step projection and peft's in-forward one agree
    with torch.no_grad():
        ours.delta -= 100 * ours.delta.grad
        encoder.delta_embedding.weight -= 100 * encoder.delta_embedding.weight.grad
    assert (ours.delta.norm(dim=1) > 1.01 * ours.epsilon).sum() >= 3  # the step left several balls
    ours.project_()
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).logits, theirs(**batch).logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.delta, encoder.delta_embedding.weight, atol=1e-6, rtol=1e-5)
