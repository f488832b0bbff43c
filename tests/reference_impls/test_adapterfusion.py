"""AdapterFusion-specific promises: the two-stage procedure on two synthetic tasks, the fusion attention's
equation, frozen (non-destructive) task adapters and a count that does not depend on N."""
from __future__ import annotations

import copy

import pytest
import torch

from impl_cases import fresh
from reference_impls import adapterfusion as af
from reference_impls._composition import task_batch
from reference_impls._core import count_trainable, train


def mean_weights(model) -> torch.Tensor:
    """Fusion weights s averaged over tokens and layers, from the last forward: (N,)."""
    return torch.stack([layer.last_weights.mean(dim=(0, 1)) for layer in af.fusion_layers(model)]).mean(dim=0)


@pytest.mark.slow
def test_fusion_attends_to_the_adapter_of_the_target_task_and_leaves_adapters_unchanged():
    base = fresh("tiny-bert")
    config = af.AdapterFusionConfig(n_adapters=2, bottleneck=8)
    # stage 1: adapter 0 learns task 0, adapter 1 learns task 1 (labels moved along the vocabulary)
    batches = [task_batch(base, 0, seed=1), task_batch(base, 1, seed=2)]
    states = af.train_task_adapters(base, batches, config, steps=30)
    weight_on_adapter_1 = {}
    for task in (0, 1):  # stage 2 on the target task's training data, as in the paper
        # (not on new samples: from one batch of 48 tokens an adapter cannot learn "move every label 7 places"
        # for tokens it never saw, so on new samples whether task 1's adapter helps is down to the random init)
        target = batches[task]
        model = af.load_adapters(af.apply(copy.deepcopy(base), config), states)
        adapters_before = {n: p.clone() for n, p in model.named_parameters() if ".adapters." in n}
        torch.manual_seed(0)
        losses = train(model, target, 20, 1e-2, **af.training_hooks(model, config))
        assert losses[-1] < 0.7 * losses[0]
        for n, p in model.named_parameters():  # non-destructive: stage 2 never touches the task adapters
            if n in adapters_before:
                assert torch.equal(p, adapters_before[n]), n
        with torch.no_grad():
            model(**target)
        weight_on_adapter_1[task] = mean_weights(model)[1].item()
    # the fusion learned to use task 1's adapter more when the target task is task 1
    assert weight_on_adapter_1[1] > weight_on_adapter_1[0] + 0.5, weight_on_adapter_1


def test_fusion_layer_computes_the_papers_attention():
    torch.manual_seed(0)
    layer = af.FusionLayer(torch.nn.Linear(16, 16), n_adapters=3, m=4, activation="relu")
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(2, 5, 16)
    h = layer.base(x)
    f = layer.fusion
    zs = [h + a.up(torch.relu(a.down(h))) for a in layer.adapters]  # z_n: (2, 5, 16)
    q = h @ f.query.weight.T + f.query.bias
    scores = torch.stack([((z @ f.key.weight.T + f.key.bias) * q).sum(-1) for z in zs], dim=-1)  # (2, 5, 3)
    s = torch.softmax(scores, dim=-1)
    expected = sum(s[..., n:n + 1] * (z @ f.value.weight.T) for n, z in enumerate(zs))
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.last_weights.sum(-1), torch.ones(2, 5))


def test_trainable_count_does_not_depend_on_the_number_of_adapters():
    counts = {n: count_trainable(af.apply(fresh("tiny-bert"), af.AdapterFusionConfig(n_adapters=n, bottleneck=8)))
              for n in (1, 2, 5)}
    assert len(set(counts.values())) == 1
    d, L = 32, 2
    assert counts[2] == L * (3 * d * d + 2 * d)  # Q, K with biases, V without (AdapterHub's BertFusion)


def test_value_regulariser_is_zero_at_init_and_grows_when_v_leaves_the_identity():
    model = af.apply(fresh("tiny-bert"), af.AdapterFusionConfig(n_adapters=2, bottleneck=8))
    assert af.fusion_regularization(model).item() == 0.0
    with torch.no_grad():
        af.fusion_layers(model)[0].fusion.value.weight[0, 1] += 0.5
    assert af.fusion_regularization(model).item() == pytest.approx(0.25)
    # what training adds to the loss: value_reg Σ ||I - V||² (AdapterHub: 0.01)
    assert af.training_hooks(model, af.AdapterFusionConfig(value_reg=0.01))["extra_loss"]().item() == pytest.approx(0.0025)
