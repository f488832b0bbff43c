"""IncreLoRA-specific promises: the module score, allocation to the top modules, advance learning of the
reserve, and a training run that ends with exactly the budget of components."""
from __future__ import annotations

import math

import pytest
import torch

from impl_cases import batch_for, logits, perturb, prepare, run_training
from reference_impls import increlora
from reference_impls._core import count_trainable, linear_dims

SMALL = dict(target_r=3, init_r=1, add_r=2, top_h=1, t_init=3, delta_t=2, target_modules=("q", "o"))


def _model(arch="tiny-llama", **kw):
    config = increlora.IncreLoRAConfig(**{**SMALL, **kw})
    _, model, _ = prepare("increlora", arch, config=config)
    return model, config


def test_score_is_normalised_sum_of_weight_times_its_gradient():
    model, _ = _model()
    perturb(model)
    layer = increlora.increlora_layers(model)[0]
    seen = {}

    def capture(mod, inp, out):
        seen["x"] = inp[0]
        out.register_hook(lambda g: seen.update(g=g))  # ∂L/∂h

    layer.register_forward_hook(capture)
    model.train()
    model(**batch_for(model)).loss.backward()
    dW_grad = torch.einsum("bto,bti->oi", seen["g"], seen["x"])  # ∂L/∂ΔW = Σ_tokens g xᵀ: (d_out, d_in)
    dW = layer.delta_weight().detach()
    expected = (dW * dW_grad).abs().sum() / math.sqrt(dW.numel())
    assert layer.score == pytest.approx(expected.item(), rel=1e-4)


def test_reserve_components_learn_in_advance_and_unallocated_ones_do_not():
    model, _ = _model()
    perturb(model)
    model.train()
    model(**batch_for(model)).loss.backward()
    layer = increlora.increlora_layers(model)[0]
    status = layer.status
    row_grad = layer.A.grad.abs().sum(1)  # (cap,)
    assert (row_grad[status == increlora.ACTIVE] > 0).all()
    assert (row_grad[status == increlora.RESERVE] > 0).all()  # advance learning: a_i, b_i of the reserve train
    assert (row_grad[status == increlora.UNALLOCATED] == 0).all()
    assert (layer.E.grad[status != increlora.ACTIVE] == 0).all()  # the reserve's e_i stays at 1e-5


def test_allocation_grows_the_top_modules_and_activates_their_reserve():
    model, config = _model(top_h=2)
    inc = increlora.RankIncreaser(model, config)
    inc.I_bar, inc.U_bar = [1.0, 4.0, 3.0, 2.0], [1.0, 1.0, 1.0, 1.0]  # modules 1 and 2 score highest
    reserve_before = [set((m.status == increlora.RESERVE).nonzero().flatten().tolist()) for m in inc.layers]
    inc.allocate()
    assert [m.rank for m in inc.layers] == [1, 3, 3, 1]
    for j in (1, 2):
        active = set((inc.layers[j].status == increlora.ACTIVE).nonzero().flatten().tolist())
        assert reserve_before[j] <= active  # the reserve became the new components
        assert int((inc.layers[j].status == increlora.RESERVE).sum()) == config.add_r  # and a new reserve


@pytest.mark.slow
def test_training_ends_with_the_budget_and_finalize_keeps_outputs():
    model, config = _model("tiny-bert")
    run_training("increlora", model, config, steps=20)
    layers = increlora.increlora_layers(model)
    assert sum(m.rank for m in layers) == config.target_r * len(layers)
    assert max(m.rank for m in layers) > config.init_r  # ranks grew
    assert all(int((m.status == increlora.RESERVE).sum()) == 0 for m in layers)  # reserves dropped
    batch = batch_for(model)
    before = logits(model, batch)
    increlora.finalize(model)
    torch.testing.assert_close(logits(model, batch), before, atol=1e-5, rtol=1e-5)
    assert count_trainable(model) == sum(m.rank * (sum(linear_dims(m.base)) + 1) for m in layers)


def test_update_is_scaled_by_alpha_over_the_current_rank():
    """ΔW = (alpha / r_t) Σ_active e_i b_i a_iᵀ (+ the reserves' fixed 1e-5), r_t = the module's active count;
    growing the rank changes the scale, and the layer's output uses exactly this ΔW."""
    model, config = _model(alpha=6)
    perturb(model)
    layer = increlora.increlora_layers(model)[0]
    x = torch.randn(2, 3, layer.A.shape[1])

    def explicit():
        active = layer.status == increlora.ACTIVE
        reserve = layer.status == increlora.RESERVE
        e = torch.where(active, layer.E, torch.where(reserve, torch.tensor(increlora.RESERVE_E), torch.tensor(0.0)))
        r_t = int(active.sum())
        return (6 / r_t) * sum(e[i] * torch.outer(layer.B[:, i], layer.A[i]) for i in range(layer.A.shape[0]))

    with torch.no_grad():
        layer.E.normal_()
        assert layer.rank == 1
        torch.testing.assert_close(layer.delta_weight(), explicit(), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(layer(x), layer.base(x) + x @ explicit().T, atol=1e-5, rtol=1e-5)
        layer.grow(2, keep_reserve=False)
        assert layer.rank == 3
        torch.testing.assert_close(layer.delta_weight(), explicit(), atol=1e-6, rtol=1e-5)


def test_factors_start_as_the_authors_small_gaussian():
    """A, B ~ N(0, 0.02²) (the authors' init; E = 0 keeps the update at zero)."""
    layer = increlora.IncreLoRALinear(torch.nn.Linear(256, 256), init_r=2, cap=64, add_r=2, alpha=8, advance_learn=True)
    assert abs(layer.A.std().item() - 0.02) < 0.001 and abs(layer.B.std().item() - 0.02) < 0.001
    assert layer.E.abs().sum() == 0
