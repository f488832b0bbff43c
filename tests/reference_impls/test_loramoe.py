"""LoRAMoE-specific promises: the router's per-token softmax mixes every expert's LoRA update; the
localised balancing constraint is β times the squared coefficient of variation of the type-weighted expert
importance; example types reach the layers with the batch. peft has no LoRAMoE: validated against the
paper's and the authors' equations (count = formula, start = base model, frozen weights, loss, save/load in
test_common.py)."""
from __future__ import annotations

import pytest
import torch

from impl_cases import batch_for, formula_count, fresh, perturb
from reference_impls import loramoe
from reference_impls._core import count_trainable, train


def _layer(n=4, r=2, alpha=4, **kw):
    torch.manual_seed(0)
    config = loramoe.LoRAMoEConfig(n_experts=n, r=r, alpha=alpha, dropout=0.0, **kw)
    layer = loramoe.LoRAMoELinear(torch.nn.Linear(6, 5), loramoe.TaskTypes(), config).eval()
    with torch.no_grad():
        layer.B.normal_()
    return layer


def test_output_is_the_router_softmax_mixture_of_every_experts_lora_update():
    layer = _layer()
    x = torch.randn(2, 3, 6)
    expected = layer.base(x)
    for b in range(2):
        for t in range(3):
            logits = layer.router @ x[b, t]  # (n,)
            g = torch.exp(logits) / torch.exp(logits).sum()
            for i in range(4):
                expected[b, t] += g[i] * (4 / 2) * layer.B[i] @ (layer.A[i] @ x[b, t])  # alpha / r = 2
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_balancing_constraint_is_beta_times_cv_squared_of_the_weighted_importance():
    layer = _layer(blc_alpha=0.3, blc_weight=0.5)
    x = torch.randn(3, 4, 6)
    layer.types.value = torch.tensor([1, 0, 1])
    layer(x)
    g = torch.softmax(x @ layer.router.T, dim=-1)  # (3, 4 tokens, 4 experts)
    Z = []
    for m, kind in enumerate([1, 0, 1]):
        for i in range(4):
            mine = (i < 2) if kind == 1 else (i >= 2)  # type 1: experts 0, 1; type 0: experts 2, 3
            Z.append((1.3 if mine else 0.7) * g[m, :, i].sum())
    Z = torch.stack(Z)
    mean = Z.sum() / 12
    var = ((Z - mean) ** 2).sum() / 11  # unbiased
    torch.testing.assert_close(layer.lbc, 0.5 * var / (mean ** 2 + 1e-10), atol=1e-6, rtol=1e-5)


def test_types_travel_with_the_batch_and_the_constraint_joins_the_loss():
    config = loramoe.LoRAMoEConfig(n_experts=4, r=2, blc_alpha=0.2, blc_weight=0.1)
    model = loramoe.apply(fresh("tiny-llama"), config)
    batch = batch_for(model)
    model(**batch)
    assert float(loramoe.balance_loss(model)) == 0.0  # no types: no constraint
    model(**batch, task_types=torch.tensor([1, 0, 0, 1]))
    layers = [m for m in model.modules() if isinstance(m, loramoe.LoRAMoELinear)]
    assert len(layers) == 6 and all(m.lbc is not None for m in layers)  # gate, up, down of 2 layers
    torch.testing.assert_close(loramoe.balance_loss(model), sum(m.lbc for m in layers))
    model.register_forward_pre_hook(lambda m, args, kw: (args, {**kw, "task_types": torch.tensor([1, 0, 0, 1])}),
                                    with_kwargs=True, prepend=True)
    router = layers[0].router.detach().clone()
    train(model, batch, steps=2, lr=1e-2, **loramoe.training_hooks(model, config))
    assert not torch.equal(layers[0].router, router)


def test_odd_expert_counts_cannot_be_halved_for_the_constraint():
    with pytest.raises(ValueError, match="must be even"):
        loramoe.apply(fresh("tiny-llama"), loramoe.LoRAMoEConfig(n_experts=3, blc_weight=0.1))


@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-t5", "tiny-llama", "tiny-gpt2"])
def test_count_matches_the_formula_on_the_feed_forward_projections(arch):
    config = loramoe.LoRAMoEConfig(n_experts=3, r=2)
    model = loramoe.apply(fresh(arch), config)
    assert count_trainable(model) == formula_count("loramoe", fresh(arch), config)


def test_the_mixture_depends_on_the_token_so_it_does_not_merge():
    model = loramoe.apply(fresh("tiny-llama"), loramoe.LoRAMoEConfig(n_experts=4, r=2))
    perturb(model)
    layer = next(m for m in model.modules() if isinstance(m, loramoe.LoRAMoELinear))
    g = layer.gates(torch.randn(1, 5, 32))
    torch.testing.assert_close(g.sum(-1), torch.ones(1, 5))
    assert (g.std(dim=1) > 1e-3).any()  # different tokens, different weights
