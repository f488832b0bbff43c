"""ReLoRA-specific promises: a restart folds (alpha / r) B A into W and starts B at zero, the accumulated
update outgrows rank r, Adam's moments of the factors are pruned by magnitude at a restart, and the step
after a restart is scaled by the jagged warm-up. peft 0.21 has no ReLoRA tuner, so there is no oracle test."""
from __future__ import annotations

import torch

from impl_cases import batch_for, fresh
from reference_impls import relora
from reference_impls._core import linear_weight


def _layer(d_in=8, d_out=6, r=2, alpha=4):
    torch.manual_seed(0)
    layer = relora.ReLoRALinear(torch.nn.Linear(d_in, d_out), r=r, alpha=alpha)
    with torch.no_grad():
        layer.B.normal_()
    return layer


def test_restart_merges_scaled_update_into_W_and_restarts_B_at_zero():
    layer = _layer()
    W0, A, B = layer.base.weight.detach().clone(), layer.A.detach().clone(), layer.B.detach().clone()
    x = torch.randn(3, 8)
    before = layer(x)
    layer.restart()
    torch.testing.assert_close(layer.base.weight, W0 + (4 / 2) * B @ A)
    assert torch.equal(layer.B, torch.zeros(6, 2))
    assert not torch.equal(layer.A, A)  # a fresh A
    torch.testing.assert_close(layer(x), before, atol=1e-6, rtol=1e-6)  # the restart keeps the function


def test_accumulated_update_reaches_rank_beyond_r():
    layer = _layer(d_in=16, d_out=16, r=2)
    W0 = layer.base.weight.detach().clone()
    for seed in range(3):
        torch.manual_seed(seed)
        with torch.no_grad():
            layer.B.normal_()
        layer.restart()
    assert torch.linalg.matrix_rank(layer.base.weight - W0).item() == 3 * 2


def test_magnitude_pruning_zeroes_the_smallest_share():
    t = torch.tensor([0.5, -4.0, 0.1, 3.0, -0.2, 2.0, 1.0, -0.05])
    relora.prune_by_magnitude_(t, 0.5)
    assert torch.equal(t, torch.tensor([0.0, -4.0, 0.0, 3.0, 0.0, 2.0, 1.0, 0.0]))
    # ratio 3/7 puts the quantile exactly on the 4th smallest |value| (0.5): entries equal to it are pruned too
    t = torch.tensor([0.5, -4.0, 0.1, 3.0, -0.2, 2.0, 1.0, -0.05])
    relora.prune_by_magnitude_(t, 3 / 7)
    assert torch.equal(t, torch.tensor([0.0, -4.0, 0.0, 3.0, 0.0, 2.0, 1.0, 0.0]))
    relora.prune_by_magnitude_(t, 1.0)
    assert torch.equal(t, torch.zeros(8))


def test_jagged_scale_rewarms_from_zero_after_each_restart():
    config = relora.ReLoRAConfig(reset_every=4, restart_warmup_steps=2)
    assert [relora.lr_scale(s, config) for s in range(10)] == [1, 1, 1, 1, 0.0, 0.5, 1, 1, 0.0, 0.5]


def _train(config, steps, inspect=None, after=None):
    model = relora.apply(fresh("tiny-llama"), config)
    hooks = relora.training_hooks(model, config)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    batch = batch_for(model)
    model.train()
    for step in range(steps):
        loss = model(**batch).loss + hooks["extra_loss"]()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if inspect:
            inspect(step, model, opt)
        hooks["after_step"](step)
        if after:
            after(step, model)
    return model, opt


def test_training_hooks_restart_every_reset_every_steps_and_reset_adam_moments():
    config = relora.ReLoRAConfig(r=4, alpha=8, dropout=0.0, reset_every=2, restart_warmup_steps=2,
                                 target_modules=("q", "v"))
    seen = {}

    def inspect(step, model, opt):
        if step == 1:  # after the optimizer step, before the hook's restart
            seen.update({n: (linear_weight(m.base).detach().clone(), m.A.detach().clone(), m.B.detach().clone())
                         for n, m in model.named_modules() if isinstance(m, relora.ReLoRALinear)})

    model, opt = _train(config, 2, inspect)
    for name, m in model.named_modules():
        if isinstance(m, relora.ReLoRALinear):
            W, A, B = seen[name]
            assert B.abs().max() > 0
            torch.testing.assert_close(linear_weight(m.base), W + (8 / 4) * B @ A)
            assert torch.equal(m.B, torch.zeros_like(m.B))
            for p in (m.A, m.B):  # optimizer_prune 1.0: every moment zeroed, the step count kept
                assert torch.equal(opt.state[p]["exp_avg"], torch.zeros_like(p))
                assert torch.equal(opt.state[p]["exp_avg_sq"], torch.zeros_like(p))
                assert opt.state[p]["step"].item() == 2


def test_steps_after_a_restart_are_scaled_zero_then_half():
    config = relora.ReLoRAConfig(r=4, alpha=8, dropout=0.0, reset_every=4, restart_warmup_steps=2,
                                 target_modules=("q",))
    stepped, kept = {}, {}  # step -> B right after Adam's step, and as the hook leaves it

    def factor(model):
        return [x for x in model.modules() if isinstance(x, relora.ReLoRALinear)][0].B.detach().clone()

    _train(config, 6, inspect=lambda step, model, opt: stepped.__setitem__(step, factor(model)),
           after=lambda step, model: kept.__setitem__(step, factor(model)))
    assert torch.equal(kept[3], torch.zeros_like(kept[3]))  # the restart after step 3
    assert stepped[4].abs().max() > 0  # Adam moved B at step 4 ...
    assert torch.equal(kept[4], kept[3])  # ... and the jagged scale 0 takes the step back
    assert stepped[5].abs().max() > 0
    torch.testing.assert_close(kept[5], kept[4] + 0.5 * (stepped[5] - kept[4]))  # scale 1/2 at k = 1
