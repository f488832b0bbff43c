"""X-LoRA-specific promises: the scalings come from the scaling pass's last hidden states through the head
and a temperature softmax, every adapted module adds the λ-weighted expert updates token by token, top-k
keeps the k largest; peft's XLoraModel, given the same experts (saved LoRA adapters it loads) and the same
head, as the oracle on tiny Llama (its adapter loader rejects BERT's key names, and it needs
`hidden_states`, which T5 does not return)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from impl_cases import batch_for, formula_count, fresh, logits, perturb
from reference_impls import xlora
from reference_impls._core import count_trainable


def _model(arch="tiny-llama", **kw):
    config = xlora.XLoraConfig(**{"n_adapters": 3, "r": 4, "alpha": 8, **kw})
    torch.manual_seed(0)
    return xlora.apply(fresh(arch), config), config


def test_mixed_pass_adds_each_experts_update_weighted_by_the_heads_softmax_per_token():
    model, _ = _model(softmax_temperature=0.5)
    perturb(model)
    batch = batch_for(model)
    with torch.no_grad():  # the scaling pass: experts at 0, so the base model's last hidden states
        H = fresh("tiny-llama")(**{k: v for k, v in batch.items() if k != "labels"},
                                output_hidden_states=True).hidden_states[-1]
    W, b = model.head[0].weight, model.head[0].bias
    lam = F.softmax((H @ W.T + b) / 0.5, dim=-1)  # (B, T, 3)
    layer = model.layers[2]  # layers.1.self_attn.q_proj
    seen = {}
    handle = layer.register_forward_hook(lambda m, args, out: seen.update(x=args[0], out=out))
    with torch.no_grad():
        model(**batch)
    handle.remove()
    x = seen["x"]
    expected = layer.base(x)
    for i in range(3):
        expected = expected + lam[..., i:i + 1] * 2.0 * (x @ layer.A[i].T @ layer.B[i].T)  # alpha / r = 2
    torch.testing.assert_close(seen["out"], expected, atol=1e-5, rtol=1e-5)


def test_top_k_keeps_the_k_largest_scalings_and_layerwise_gives_each_module_its_own():
    model, _ = _model(top_k_lora=2, layerwise_scalings=True)
    lam = model.predict_scalings(torch.randn(2, 5, 32))
    assert lam.shape == (2, 5, 4, 3)  # 4 adapted modules (q, v of 2 layers)
    assert ((lam > 0).sum(-1) == 2).all()
    full = F.softmax(model.head(torch.zeros(1, 1, 32)).view(1, 1, 4, 3), dim=-1)
    kept = model.predict_scalings(torch.zeros(1, 1, 32))
    torch.testing.assert_close(kept, full * (full > full.min(-1, keepdim=True).values))
    assert not torch.allclose(kept[0, 0, 0], kept[0, 0, 1])  # layer-wise


def test_stand_in_experts_follow_the_seed_and_count_is_the_head():
    a, config = _model(xlora_depth=3, xlora_size=16)
    b, _ = _model(xlora_depth=3, xlora_size=16)
    torch.testing.assert_close(a.layers[0].B, b.layers[0].B)
    assert count_trainable(a) == formula_count("xlora", fresh("tiny-llama"), config)
    assert count_trainable(a) == (33 * 16) + (17 * 16) + (17 * 3)
    trainable, _ = _model(use_trainable_adapters=True)
    # plus 3 experts of rank 4 on q (32 -> 32) and v (32 -> 16, grouped-query) of both layers
    assert count_trainable(trainable) == 33 * 3 + 2 * 3 * 4 * ((32 + 32) + (32 + 16))
    with pytest.raises(ValueError, match="n_adapters is 0"):
        xlora.apply(fresh("tiny-llama"), xlora.XLoraConfig())


@pytest.mark.peft_oracle
def test_matches_peft_xlora_with_the_same_experts_and_head(tmp_path):
    peft = pytest.importorskip("peft")
    ours, config = _model(xlora_depth=2, xlora_size=16, softmax_temperature=0.7)
    perturb(ours)
    adapters = {}
    for i in range(3):  # three trained-looking LoRA experts, saved as peft adapters
        torch.manual_seed(10 + i)
        expert = peft.get_peft_model(fresh("tiny-llama"), peft.LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        expert.save_pretrained(tmp_path / str(i))
        adapters[str(i)] = str(tmp_path / str(i))
    base = fresh("tiny-llama")
    base.config.use_cache = False  # peft's X-LoRA requires it
    theirs = peft.get_peft_model(base, peft.XLoraConfig(
        task_type="CAUSAL_LM", hidden_size=32, adapters=adapters, xlora_depth=2, xlora_size=16,
        softmax_temperature=0.7))
    inner = theirs.base_model.lora_model.model
    names = [n for n, m in ours.model.named_modules() if isinstance(m, xlora.XLoraLinear)]
    xlora.load_experts(ours, [{n: (inner.get_submodule(n).lora_A[str(i)].weight, inner.get_submodule(n).lora_B[
        str(i)].weight) for n in names} for i in range(3)])
    head = theirs.base_model.internal_xlora_classifier.layers
    pairs = [(ours.head[0].weight, head[0].weight), (ours.head[0].bias, head[0].bias),
             (ours.head[-1].weight, head[-1].weight), (ours.head[-1].bias, head[-1].bias)]
    with torch.no_grad():
        for mine, their in pairs:
            their.copy_(mine)
    assert theirs.get_nb_trainable_parameters()[0] == count_trainable(ours) == formula_count(
        "xlora", fresh("tiny-llama"), config)
    batch = batch_for(ours)
    torch.testing.assert_close(logits(ours, batch), logits(theirs, batch), atol=1e-5, rtol=1e-5)
    for model in (ours, theirs):
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
    assert ours.head[0].weight.grad.abs().max() > 0
    for mine, their in pairs:
        torch.testing.assert_close(mine.grad, their.grad, atol=1e-5, rtol=1e-4)
