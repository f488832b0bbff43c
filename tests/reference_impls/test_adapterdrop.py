"""AdapterDrop-specific promises: dropped layers hold and run no adapter; the count follows the layers kept."""
from __future__ import annotations

import pytest
import torch

from impl_cases import batch_for, formula_count, fresh, run_training
from reference_impls import adapterdrop as ad
from reference_impls._core import count_trainable
from reference_impls.sequential_adapter import Bottleneck


def _calls(model) -> list[str]:
    """Names of the adapter branches that run in the next forwards."""
    ran: list[str] = []
    for name, m in model.named_modules():
        if isinstance(m, Bottleneck):
            m.register_forward_hook(lambda mod, i, o, name=name: ran.append(name))
    return ran


@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-llama"])
def test_dropped_layers_run_no_adapter_code_and_stay_equal_to_base(arch):
    base = fresh(arch)
    model = ad.apply(fresh(arch), ad.AdapterDropConfig(dropped_layers=1, reduction_factor=4))
    assert [a is None for a in ad.adapters(model)] == [True, False]
    with torch.no_grad():  # make the kept adapter change its layer's output
        for p in model.parameters():
            if p.requires_grad:
                p.normal_()
    ran = _calls(model)
    batch = {k: v for k, v in batch_for(model).items() if k != "labels"}
    out = model(**batch, output_hidden_states=True)
    ref = base(**batch, output_hidden_states=True)
    assert len(ran) == 1 and ".1." in ran[0]  # only the kept layer's adapter ran
    # the dropped layer is the frozen base layer: its output is bitwise the base model's
    assert torch.equal(out.hidden_states[1], ref.hidden_states[1])
    assert not torch.allclose(out.hidden_states[2], ref.hidden_states[2], atol=1e-3)


@pytest.mark.parametrize("n", [0, 1, 2])
def test_count_matches_catalog_for_every_number_dropped(n):
    base = fresh("tiny-bert")
    config = ad.AdapterDropConfig(dropped_layers=n, reduction_factor=4)
    model = ad.apply(fresh("tiny-bert"), config)
    assert count_trainable(model) == formula_count("adapterdrop", base, config) == (2 - n) * (2 * 32 * 8 + 8 + 32)


def test_robust_training_skips_a_random_number_of_lowest_adapters_then_drop_removes_them():
    config = ad.AdapterDropConfig(dropped_layers=1, reduction_factor=4, robust=True, seed=3)
    model = ad.apply(fresh("tiny-llama"), config)
    assert all(a is not None for a in ad.adapters(model))  # robust: adapters everywhere while training
    skipped = []
    hooks = ad.training_hooks(model, config)
    after = hooks["after_step"]

    def record(step: int) -> None:
        after(step)
        skipped.append(sum(not a.active for a in ad.adapters(model)))

    hooks["after_step"] = record
    torch.manual_seed(0)
    from reference_impls._core import train
    losses = train(model, batch_for(model), steps=12, lr=1e-2, **hooks)
    assert set(skipped) == {0, 1}  # both numbers of dropped layers were trained
    assert losses[-1] < losses[0]
    ad.drop_adapters(model, config.dropped_layers)  # inference: drop the configured number
    assert ad.adapters(model)[0] is None and ad.adapters(model)[1].active
    ran = _calls(model)
    model(**batch_for(model))
    assert len(ran) == 1


def test_robust_schedule_skips_the_lowest_n_layers_with_n_uniform_over_the_layers():
    """n ~ U{0 .. n_layers - 1} per step from random.Random(seed); the lowest n adapters are skipped."""
    import random
    config = ad.AdapterDropConfig(dropped_layers=1, reduction_factor=4, robust=True, seed=7)
    model = ad.apply(fresh("tiny-llama"), config)
    rng = random.Random(7)
    hooks = ad.training_hooks(model, config)
    for step in range(20):
        n = rng.randrange(2)
        assert [not a.active for a in ad.adapters(model)] == [i < n for i in range(2)]
        hooks["after_step"](step)


def test_dropping_more_layers_than_the_model_has_is_an_error():
    with pytest.raises(ValueError, match="dropped_layers=5 must be in 0..2"):
        ad.apply(fresh("tiny-bert"), ad.AdapterDropConfig())  # the paper's default 5, on a 2-layer model
