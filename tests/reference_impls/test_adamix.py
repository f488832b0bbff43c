"""AdaMix-specific promises: random routes while training, averaged experts at inference (and the collapsed
model is that inference path), a symmetric-KL consistency term, and a LoRA form that merges."""
from __future__ import annotations

import copy

import torch

from impl_cases import batch_for, fresh, logits, perturb, run_training
from reference_impls import adamix as am
from reference_impls import sequential_adapter as sa
from reference_impls._core import count_trainable, merge, train

CONFIG = am.AdaMixConfig(n_modules=3, bottleneck=8)


def test_training_forwards_take_random_routes_and_inference_is_deterministic():
    model = am.apply(fresh("tiny-bert"), CONFIG)
    perturb(model, std=0.3)
    batch = batch_for(model)
    model.train()
    with torch.no_grad():
        outs = [model(**batch).logits for _ in range(6)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])  # 9 routes per mixture: six passes differ
    assert torch.equal(logits(model, batch), logits(model, batch))


def test_averaged_model_equals_the_inference_path_and_is_one_houlsby_adapter():
    model = am.apply(fresh("tiny-llama"), CONFIG)
    run_training("adamix", model, CONFIG, steps=5)  # experts trained on different routes differ
    batch = batch_for(model)
    mixture = logits(model, batch)
    mix = model.model.layers[0].mlp.down_proj
    assert not torch.allclose(mix.W_down[0], mix.W_down[1])
    collapsed = am.average_experts(copy.deepcopy(model))
    torch.testing.assert_close(logits(collapsed, batch), mixture, atol=1e-5, rtol=1e-5)
    # the collapsed mixture is exactly a Houlsby adapter with the averaged weights
    houlsby = sa.apply(fresh("tiny-llama"), sa.SequentialAdapterConfig(bottleneck=8, activation=CONFIG.activation))
    assert count_trainable(collapsed) == count_trainable(houlsby)
    with torch.no_grad():
        for name, m in houlsby.named_modules():
            if isinstance(m, sa.SequentialAdapter):
                mine = model.get_submodule(name)
                m.adapter.down.weight.copy_(mine.W_down.mean(0))
                m.adapter.down.bias.copy_(mine.b_down.mean(0))
                m.adapter.up.weight.copy_(mine.W_up.mean(0))
                m.adapter.up.bias.copy_(mine.b_up.mean(0))
    torch.testing.assert_close(logits(houlsby, batch), mixture, atol=1e-5, rtol=1e-5)


def test_consistency_term_is_the_symmetric_kl_of_two_routes():
    a, b = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    pa, pb = a.softmax(-1), b.softmax(-1)
    kl = lambda p, q: (p * (p / q).log()).sum(-1).mean()  # noqa: E731
    torch.testing.assert_close(am.symmetric_kl(a, b), 0.5 * (kl(pa, pb) + kl(pb, pa)), atol=1e-6, rtol=1e-5)
    assert am.symmetric_kl(a, a).abs() < 1e-6

    model = am.apply(fresh("tiny-bert"), CONFIG)
    consistency = am.Consistency(model, weight=2.0)
    model.train()
    model(**batch_for(model))
    assert consistency.loss() == 0  # at init every up-projection is zero: every route gives the same output
    perturb(model, std=0.3)
    torch.manual_seed(1)
    model(**batch_for(model))
    assert consistency.loss() > 0
    assert consistency.kwargs is None and consistency.logits is None  # nothing kept after use
    # the term is λ times the symmetric KL between the recorded pass and a second, independently routed one
    batch = batch_for(model)
    torch.manual_seed(2)
    first = model(**batch).logits
    torch.manual_seed(3)
    term = consistency.loss()
    torch.manual_seed(3)
    second = model(**batch).logits
    torch.testing.assert_close(term, 2.0 * am.symmetric_kl(first, second))
    assert term > 0


def test_consistency_term_stops_the_gradient_through_each_kl_target():
    """The authors' symmetric_KL_loss detaches the target of each KL term: ∂/∂a = ½ ∂KL(sg(p_b) ‖ p_a)/∂a."""
    a = torch.randn(2, 3, 7, requires_grad=True)
    b = torch.randn(2, 3, 7)
    am.symmetric_kl(a, b).backward()
    a2 = a.detach().clone().requires_grad_(True)
    pb = b.softmax(-1)
    (0.5 * (pb * (pb.log() - a2.log_softmax(-1))).sum(-1).mean()).backward()  # ½ KL(sg(p_b) ‖ p_a)
    torch.testing.assert_close(a.grad, a2.grad, atol=1e-6, rtol=1e-5)


def test_defaults_follow_the_authors_run():
    """The authors' README command shares the up-projection (sharing_up 1, sharing_down 0); ExpertSoup: gelu."""
    assert am.AdaMixConfig().share_up is True and am.AdaMixConfig().activation == "gelu"


def test_shared_up_projection_keeps_one_up_expert_per_mixture():
    model = am.apply(fresh("tiny-bert"), am.AdaMixConfig(n_modules=3, bottleneck=8, share_up=True))
    mix = model.bert.encoder.layer[0].output.dense
    assert mix.W_up.shape == (1, 32, 8) and mix.W_down.shape == (3, 8, 32)


def test_lora_form_averages_into_one_update_that_merges_into_the_weight():
    config = am.AdaMixConfig(n_modules=3, base_method="lora", r=4, alpha=8, target_modules=("q", "v"))
    model = am.apply(fresh("tiny-llama"), config)
    perturb(model, std=0.3)
    batch = batch_for(model)
    unmerged = logits(model, batch)
    q = model.model.layers[0].self_attn.q_proj
    torch.testing.assert_close(q.delta_weight(), 2.0 * q.B.mean(0) @ q.A.mean(0))
    torch.testing.assert_close(logits(merge(copy.deepcopy(model)), batch), unmerged, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits(am.average_experts(model), batch), unmerged, atol=1e-5, rtol=1e-5)
    losses = train(am.apply(fresh("tiny-llama"), config), batch, steps=20, lr=1e-2)
    assert losses[-1] < losses[0]
