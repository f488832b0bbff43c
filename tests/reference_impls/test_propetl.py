"""ProPETL-specific promises: one shared prototype, binary masks of the set sparsity, straight-through scores;
the prefix and LoRA forms (the generic tests in test_common.py run the default adapter form)."""
from __future__ import annotations

import pytest
import torch

from impl_cases import batch_for, catalog_method, formula_count, fresh, logits, perturb
from reference_impls import propetl
from reference_impls._core import arch_symbols, count_trainable, merge, train, unmerge


def _model():
    return propetl.apply(fresh("tiny-llama"), propetl.ProPETLConfig(bottleneck=8, sparsity=0.5))


def _layers(model) -> list[propetl.MaskedAdapter]:
    return [m for m in model.modules() if isinstance(m, propetl.MaskedAdapter)]


def test_all_layers_share_one_prototype_and_own_their_scores():
    layers = _layers(_model())
    assert len(layers) == 2 and layers[0].prototype is layers[1].prototype
    assert layers[0].S_down is not layers[1].S_down


def test_masks_are_binary_keep_one_minus_sparsity_and_differ_across_layers():
    layers = _layers(_model())
    masks = [propetl.topk_mask(m.S_down, m.keep).detach() for m in layers]
    for mask in masks:
        assert set(mask.unique().tolist()) == {0.0, 1.0}
        assert mask.mean().item() == pytest.approx(0.5, abs=1 / mask.numel())
    assert not torch.equal(masks[0], masks[1])


def test_straight_through_gradient_of_scores_is_the_gradient_of_the_mask():
    S = torch.rand(4, 6, requires_grad=True)
    upstream = torch.randn(4, 6)
    (propetl.topk_mask(S, 0.5) * upstream).sum().backward()
    assert torch.equal(S.grad, upstream)


def test_mask_keeps_the_largest_magnitudes_and_passes_sign_times_the_gradient():
    """GetSubnet(scores.abs(), k) of the authors' code: the top share of |S| is kept, whatever the sign;
    the straight-through gradient reaches S as sign(S) ⊙ ∂L/∂M."""
    S = torch.tensor([[-0.9, 0.1, 0.5], [-0.05, 0.7, -0.3]], requires_grad=True)
    mask = propetl.topk_mask(S, 0.5)
    assert torch.equal(mask.detach(), torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))  # |S|: .9, .7, .5 kept
    upstream = torch.randn(2, 3)
    (mask * upstream).sum().backward()
    assert torch.equal(S.grad, torch.sign(S.detach()) * upstream)


def test_scores_and_prototype_get_gradients():
    model = _model()
    with torch.no_grad():
        _layers(model)[0].prototype.up.weight.normal_()  # W_up = 0 would block the scores' gradient
    model(**batch_for(model)).loss.backward()
    for m in _layers(model):
        assert m.S_down.grad.abs().sum() > 0 and m.S_up.grad.abs().sum() > 0
    assert _layers(model)[0].prototype.down.weight.grad.abs().sum() > 0


def test_an_unknown_form_is_refused():
    with pytest.raises(ValueError, match="choose one of adapter, prefix, lora"):
        propetl.apply(fresh("tiny-llama"), propetl.ProPETLConfig(form="ia3"))


# -- prefix and LoRA forms: their formulas are stated in the catalog's note ------------------------
PREFIX_FORM = {"total": "2 * n_virtual_tokens * n_kv_heads * d_head",
               "per_layer": "2 * n_virtual_tokens * n_kv_heads * d_head"}
LORA_FORM = {"per_target": "r * (d_in + d_out) * (n_layers + 1) / n_layers"}
FORM_ARCHS = ["tiny-bert", "tiny-llama"]


def test_the_catalog_note_states_the_prefix_and_lora_formulas():
    note = " ".join(catalog_method("propetl").trainable_params.note.split())
    assert f"Prefix form: total {PREFIX_FORM['total']} " in note
    assert f"per_layer {PREFIX_FORM['per_layer']} " in note
    assert f"LoRA form: per_target {LORA_FORM['per_target']} " in note


@pytest.mark.parametrize("arch", FORM_ARCHS)
@pytest.mark.parametrize("form,scopes,config", [
    ("prefix", PREFIX_FORM, dict(n_virtual_tokens=4)),
    ("lora", LORA_FORM, dict(r=4, target_modules=("q", "v"))),
])
def test_form_count_matches_its_formula(arch, form, scopes, config):
    config = propetl.ProPETLConfig(form=form, **config)
    base, adapted = fresh(arch), propetl.apply(fresh(arch), config)
    assert count_trainable(adapted) == formula_count("propetl", base, config, scopes=scopes)


def _lora(arch="tiny-llama"):
    return propetl.apply(fresh(arch), propetl.ProPETLConfig(form="lora", r=4, alpha=8))


def test_lora_form_shares_one_prototype_per_kind_of_matrix():
    model = _lora()
    layers = [m for m in model.modules() if isinstance(m, propetl.MaskedLoRA)]
    q = [m for n, m in model.named_modules() if n.endswith("q_proj") and isinstance(m, propetl.MaskedLoRA)]
    v = [m for n, m in model.named_modules() if n.endswith("v_proj") and isinstance(m, propetl.MaskedLoRA)]
    assert len(layers) == 4 and len(q) == len(v) == 2
    assert q[0].prototype is q[1].prototype and v[0].prototype is v[1].prototype
    assert q[0].prototype is not v[0].prototype  # with 2 kv heads, v_proj is narrower than q_proj
    assert q[0].S_A is not q[1].S_A


@pytest.mark.parametrize("arch", FORM_ARCHS)
def test_lora_form_starts_equal_and_merges(arch):
    base, model = fresh(arch), _lora(arch)
    batch = batch_for(base)
    torch.testing.assert_close(logits(model, batch), logits(base, batch), atol=1e-4, rtol=1e-4)
    perturb(model, std=0.1)
    unmerged = logits(model, batch)
    assert (unmerged - logits(base, batch)).abs().max() > 1e-2
    torch.testing.assert_close(logits(merge(model), batch), unmerged, atol=1e-4, rtol=1e-4)
    unmerge(model)
    torch.testing.assert_close(logits(model, batch), unmerged, atol=1e-4, rtol=1e-4)


def test_lora_form_masks_the_prototype_differently_in_each_layer():
    q = [m for n, m in _lora().named_modules() if n.endswith("q_proj") and isinstance(m, propetl.MaskedLoRA)]
    with torch.no_grad():
        q[0].prototype.B.normal_()
    deltas = [m.delta_weight() for m in q]
    assert not torch.equal(deltas[0], deltas[1])
    A0, B0 = q[0].factors()
    assert (A0 == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)  # sparsity 0.5 of A's entries


def test_prefix_form_builds_each_layers_prefix_from_the_shared_prototype():
    model = propetl.apply(fresh("tiny-llama"), propetl.ProPETLConfig(form="prefix", n_virtual_tokens=4))
    enc = model.prefix_encoder
    kv = enc.kv().detach()  # (2L, n_kv, P, hs)
    s = arch_symbols(model.config)
    assert kv.shape == (2 * s["n_layers"], s["n_kv_heads"], 4, s["d_head"])
    proto = enc.prototype.detach().view(4, 2, s["n_kv_heads"], s["d_head"]).permute(1, 2, 0, 3)  # (2, n_kv, P, hs)
    for layer in range(s["n_layers"]):
        mask = propetl.topk_mask(enc.scores[layer], enc.keep).detach().view(4, 2, s["n_kv_heads"], s["d_head"])
        expected = proto * mask.permute(1, 2, 0, 3)
        assert torch.equal(kv[2 * layer:2 * layer + 2], expected)
    assert not torch.equal(kv[0], kv[2])  # two layers, two masks


@pytest.mark.slow
@pytest.mark.parametrize("form,lr", [("prefix", 1e-1), ("lora", 1e-2)])  # a raw prefix, like a prompt, needs large steps
def test_form_learns(form, lr):
    model = propetl.apply(fresh("tiny-llama"), propetl.ProPETLConfig(form=form, r=4, n_virtual_tokens=4))
    losses = train(model, batch_for(model), steps=30, lr=lr)
    assert losses[-1] < 0.9 * losses[0]


def test_prefix_form_reaches_t5_through_the_key_and_value_projections():
    model = propetl.apply(fresh("tiny-t5"), propetl.ProPETLConfig(form="prefix", n_virtual_tokens=4))
    config = propetl.ProPETLConfig(form="prefix", n_virtual_tokens=4)
    assert count_trainable(model) == formula_count("propetl", fresh("tiny-t5"), config, scopes=PREFIX_FORM)
    batch = batch_for(model)
    model.prefix_encoder.scores.data.fill_(1.0)  # keep everything: then the prototype is every layer's prefix
    before = logits(model, batch)
    with torch.no_grad():
        model.prefix_encoder.prototype.mul_(2)
    assert not torch.allclose(logits(model, batch), before)  # the prefix takes part in attention
