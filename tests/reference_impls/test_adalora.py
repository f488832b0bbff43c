"""AdaLoRA-specific promises: the regulariser, the budget schedule, rank allocation; peft as the oracle."""
from __future__ import annotations

import pytest
import torch

from impl_cases import batch_for, fresh, logits, perturb, prepare, run_training
from reference_impls import adalora
from reference_impls._core import count_trainable, find_targets

ATOL, RTOL = 1e-4, 1e-4  # float32 logits of magnitude ~5 along different summation orders (see test_common)
SCHEDULE = dict(total_steps=30, t_init=3, t_final=10, delta_t=2)


def test_regularizer_is_zero_for_orthonormal_P_and_Q():
    model = adalora.apply(fresh("tiny-llama"), adalora.AdaLoRAConfig(init_r=4))
    with torch.no_grad():
        for m in adalora.svd_layers(model):
            m.P.copy_(torch.linalg.qr(torch.randn(m.P.shape)).Q)       # orthonormal columns: PᵀP = I
            m.Q.copy_(torch.linalg.qr(torch.randn(m.Q.shape).T).Q.T)   # orthonormal rows: QQᵀ = I
    assert adalora.orthogonal_regularization(model).item() < 1e-5
    with torch.no_grad():
        adalora.svd_layers(model)[0].P.mul_(2)  # PᵀP = 4I: one of 2n matrices is off by ||3I||_F = 3 * 2
    n = len(adalora.svd_layers(model))
    assert adalora.orthogonal_regularization(model).item() == pytest.approx(6 / (2 * n), abs=1e-5)


def test_importance_is_the_ema_product_of_sensitivity_and_uncertainty():
    model = adalora.apply(fresh("tiny-llama"), adalora.AdaLoRAConfig(init_r=4, beta1=0.8, beta2=0.6))
    allocator = adalora.RankAllocator(model, adalora.AdaLoRAConfig(init_r=4, beta1=0.8, beta2=0.6))
    perturb(model)
    layer = allocator.layers[0]
    I_bar = U_bar = 0
    for seed in range(3):
        model.zero_grad()
        model(**batch_for(model, seed=seed)).loss.backward()
        I = (layer.P * layer.P.grad).abs().detach()
        I_bar = 0.8 * I_bar + 0.2 * I
        U_bar = 0.6 * U_bar + 0.4 * (I - I_bar).abs()
        allocator.update_importance()
    torch.testing.assert_close(allocator.I_bar[layer.P], I_bar, atol=0, rtol=1e-6)
    torch.testing.assert_close(allocator.U_bar[layer.P], U_bar, atol=0, rtol=1e-6)


def test_training_ends_with_the_target_budget_of_singular_values():
    _, model, config = prepare("adalora", "tiny-llama")
    run_training("adalora", model, config, steps=config.total_steps + 1)
    kept = sum(int((m.Lambda != 0).sum()) for m in adalora.svd_layers(model))
    assert kept == config.target_r * len(adalora.svd_layers(model))
    assert count_trainable(model) > 0  # pruning masks values; the tensors (and the count) stay


def _peft_model(peft, arch: str, config: adalora.AdaLoRAConfig):
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    return peft.get_peft_model(fresh(arch), peft.AdaLoraConfig(
        init_r=config.init_r, target_r=config.target_r, lora_alpha=config.alpha, lora_dropout=0.0,
        beta1=config.beta1, beta2=config.beta2, tinit=config.t_init, tfinal=config.t_final,
        deltaT=config.delta_t, total_step=config.total_steps, target_modules=names,
        fan_in_fan_out=arch == "tiny-gpt2")), names


def _copy_into_peft(ours, theirs, names) -> None:
    inner = theirs.base_model.model
    with torch.no_grad():
        for name in names:
            mine, layer = ours.get_submodule(name), inner.get_submodule(name)
            layer.lora_A["default"].copy_(mine.Q)                # (r, d_in)
            layer.lora_B["default"].copy_(mine.P)                # (d_out, r)
            layer.lora_E["default"].copy_(mine.Lambda[:, None])  # (r, 1)


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-llama", "tiny-gpt2"])
def test_matches_peft_count_and_outputs(arch):
    peft = pytest.importorskip("peft")
    config = adalora.AdaLoRAConfig(init_r=6, target_r=4, **SCHEDULE)
    ours = adalora.apply(fresh(arch), config)
    perturb(ours)
    theirs, names = _peft_model(peft, arch, config)
    assert theirs.get_nb_trainable_parameters()[0] == count_trainable(ours)
    _copy_into_peft(ours, theirs, names)
    batch = batch_for(ours)
    # peft scales by alpha / (init_r + 1e-5), we by alpha / init_r: a 2e-6 relative difference of the update
    torch.testing.assert_close(logits(ours, batch), logits(theirs, batch), atol=ATOL, rtol=RTOL)


@pytest.mark.peft_oracle
def test_budget_schedule_and_pruned_ranks_match_peft():
    peft = pytest.importorskip("peft")
    config = adalora.AdaLoRAConfig(init_r=6, target_r=4, **SCHEDULE)
    ours = adalora.apply(fresh("tiny-llama"), config)
    perturb(ours)
    theirs, names = _peft_model(peft, "tiny-llama", config)
    _copy_into_peft(ours, theirs, names)
    allocator = adalora.RankAllocator(ours, config)
    for step in range(config.total_steps + 2):
        assert allocator.budget(step) == theirs.base_model.rankallocator.budget_schedule(step), f"step {step}"

    # same weights, same gradients (no optimizer step, one batch per step): the same singular values survive
    for step in range(config.total_steps + 1):
        batch = batch_for(ours, seed=step)
        del batch["labels"]  # peft would add its regulariser to a loss it computes; use one loss for both
        for model in (ours, theirs):
            model.zero_grad()
            model(**batch).logits.pow(2).mean().backward()
        allocator.step(step)
        theirs.base_model.update_and_allocate(step)
        inner = theirs.base_model.model
        for name in names:
            kept_ours = ours.get_submodule(name).Lambda != 0
            kept_theirs = inner.get_submodule(name).lora_E["default"].view(-1) != 0
            assert torch.equal(kept_ours, kept_theirs), f"step {step}, {name}"
    kept = sum(int((m.Lambda != 0).sum()) for m in adalora.svd_layers(ours))
    assert kept == config.target_r * len(names)  # pruning did happen, down to the target budget


def _explicit_orthogonality(model) -> torch.Tensor:
    """R = mean over the 2n matrices of ||PᵀP - I||_F and ||QQᵀ - I||_F, written out entry by entry."""
    terms = []
    for m in adalora.svd_layers(model):
        r = m.Lambda.shape[0]
        for G in (m.P.T @ m.P, m.Q @ m.Q.T):
            terms.append(((G - torch.eye(r)) ** 2).sum().sqrt())
    return sum(terms) / len(terms)


def test_the_weighted_orthogonality_regulariser_is_what_training_adds_to_the_loss():
    """One step of _core.train with the method's hooks moves P and Q exactly as Adam on
    L_task + orth_reg_weight * R does (R recomputed here), and not as Adam on L_task alone."""
    import copy

    import reference_impls
    from reference_impls._core import train

    config = adalora.AdaLoRAConfig(init_r=4, orth_reg_weight=0.7, total_steps=5, t_init=10)  # no pruning yet
    model = adalora.apply(fresh("tiny-llama"), config)
    perturb(model)
    batch = batch_for(model)
    hooks = reference_impls.hooks("adalora", model, config)
    assert set(hooks) == {"extra_loss", "after_step"}
    torch.testing.assert_close(hooks["extra_loss"](), 0.7 * _explicit_orthogonality(model))

    def manual_step(m, with_reg: bool):
        params = [p for p in m.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=1e-2)
        m.train()
        loss = m(**batch).loss + (0.7 * _explicit_orthogonality(m) if with_reg else 0.0)
        loss.backward()
        opt.step()

    expected, without = copy.deepcopy(model), copy.deepcopy(model)
    train(model, batch, 1, 1e-2, **hooks)
    manual_step(expected, True)
    manual_step(without, False)
    for ours, want, plain in zip(adalora.svd_layers(model), adalora.svd_layers(expected), adalora.svd_layers(without)):
        torch.testing.assert_close(ours.P, want.P, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(ours.Q, want.Q, atol=1e-6, rtol=1e-5)
    assert any((o.P - p.P).abs().max() > 1e-4 for o, p in zip(adalora.svd_layers(model), adalora.svd_layers(without)))


def test_update_is_P_Lambda_Q_scaled_by_alpha_over_init_r():
    config = adalora.AdaLoRAConfig(init_r=4, alpha=12)
    model = adalora.apply(fresh("tiny-llama"), config)
    perturb(model)
    layer = adalora.svd_layers(model)[0]
    with torch.no_grad():
        layer.Lambda.normal_()
        x = torch.randn(2, 3, layer.Q.shape[1])
        expected = layer.base(x) + (12 / 4) * x @ (layer.P @ torch.diag(layer.Lambda) @ layer.Q).T
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
