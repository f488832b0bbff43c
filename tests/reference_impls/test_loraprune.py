"""LoRAPrune-specific promises: the LoRA-guided gradient estimate, the grouped importance, the sparsity
schedule, and pruning that removes exactly the least important heads / channels."""
from __future__ import annotations

import pytest
import torch

from impl_cases import batch_for, perturb, prepare, run_training
from reference_impls import loraprune
from reference_impls._core import linear_weight

SMALL = dict(r=4, alpha=8, total_steps=30, t_init=3, t_final=5, delta_t=2)


def _model(arch="tiny-llama", **kw):
    config = loraprune.LoRAPruneConfig(**{**SMALL, **kw})
    _, model, _ = prepare("loraprune", arch, config=config)
    return model, config


def _backward(model):
    model.zero_grad()
    model(**batch_for(model)).loss.backward()


def test_gradient_estimate_is_minus_the_change_of_BA_under_one_unit_sgd_step():
    model, _ = _model()
    perturb(model)
    _backward(model)
    layer = loraprune.prune_layers(model)[0]
    with torch.no_grad():
        before = layer.B @ layer.A
        after = (layer.B - layer.B.grad) @ (layer.A - layer.A.grad)  # SGD with learning rate 1
        G = layer.B.grad @ layer.A + layer.B @ layer.A.grad - layer.B.grad @ layer.A.grad
        torch.testing.assert_close(G, -(after - before), atol=1e-6, rtol=1e-5)
        W_hat = layer.base.weight + layer.delta_weight()
        torch.testing.assert_close(layer.weight_importance(), (G * W_hat).abs())


def test_group_importance_sums_each_head_and_normalises():
    model, _ = _model("tiny-bert")
    perturb(model)
    _backward(model)
    q = model.get_submodule("bert.encoder.layer.0.attention.self.query")
    o = model.get_submodule("bert.encoder.layer.0.attention.output.dense")
    assert q.group == ("bert.encoder.layer.0", "attn", "row") and o.group == ("bert.encoder.layer.0", "attn", "col")
    I = q.weight_importance()  # (32, 32): 4 heads of 8 rows
    s = torch.stack([I[8 * h:8 * (h + 1)].sum() for h in range(4)])
    torch.testing.assert_close(q.group_importance(), s / s.norm())
    I = o.weight_importance()  # heads are o's input columns
    s = torch.stack([I[:, 8 * h:8 * (h + 1)].sum() for h in range(4)])
    torch.testing.assert_close(o.group_importance(), s / s.norm())


def test_t5_encoder_and_decoder_blocks_keep_separate_importance_and_masks():
    """Groups are keyed by the block's full path: encoder block i and decoder block i are two sets."""
    model, config = _model("tiny-t5")
    perturb(model)
    pruner = loraprune.Pruner(model, config)
    assert sorted(pruner.sets) == sorted((f"{stack}.block.{i}", kind) for stack in ("encoder", "decoder")
                                         for i in (0, 1) for kind in ("attn", "ffn"))
    enc_q = model.get_submodule("encoder.block.0.layer.0.SelfAttention.q")
    dec_q = model.get_submodule("decoder.block.0.layer.0.SelfAttention.q")
    assert enc_q in pruner.sets["encoder.block.0", "attn"] and dec_q in pruner.sets["decoder.block.0", "attn"]
    _backward(model)
    pruner.update_importance()
    key = ("decoder.block.0", "attn")
    expected = sum(m.group_importance() for m in pruner.sets[key])  # q, k, v rows and o columns of that block
    torch.testing.assert_close(pruner.I_bar[key], expected)
    pruner.prune(0.5)
    for key, modules in pruner.sets.items():
        for m in modules:
            mask = m.out_mask if m.group[2] == "row" else m.in_mask
            torch.testing.assert_close(mask, pruner.keep[key].repeat_interleave(m.group_size).float())


def test_gpt2_fused_qkv_rows_are_grouped_by_head_in_each_third():
    model, config = _model("tiny-gpt2")
    perturb(model)
    _backward(model)
    c_attn = model.get_submodule("transformer.h.0.attn.c_attn")
    assert c_attn.group == ("transformer.h.0", "attn", "row") and c_attn.n_parts == 3
    I = c_attn.weight_importance()  # (96, 32): q | k | v, each 4 heads of 8 rows
    parts = []
    for part in range(3):
        s = torch.stack([I[32 * part + 8 * h: 32 * part + 8 * (h + 1)].sum() for h in range(4)])
        parts.append(s / s.norm())
    torch.testing.assert_close(c_attn.group_importance(), sum(parts))
    c_attn.set_group_mask(torch.tensor([True, False, True, True]))  # prune head 1 in q, k and v
    dropped = [r for r in range(96) if (r % 32) // 8 == 1]
    assert c_attn.out_mask[dropped].sum() == 0 and c_attn.out_mask.sum() == 96 - 24


def test_sparsity_schedule_rises_from_zero_to_the_target():
    model, config = _model(sparsity=0.5)
    pruner = loraprune.Pruner(model, config)
    p = [pruner.sparsity(t) for t in range(config.total_steps)]
    assert p[: config.t_init + 1] == [0.0] * (config.t_init + 1)
    assert all(a <= b for a, b in zip(p, p[1:]))
    assert p[-1] == 0.5 and p[-config.t_final] == 0.5


def test_pruning_removes_the_lowest_importance_groups_and_never_revives_them():
    model, config = _model("tiny-bert")
    perturb(model)
    pruner = loraprune.Pruner(model, config)
    _backward(model)
    pruner.update_importance()
    pruner.prune(0.25)  # 1 of 4 heads, 16 of 64 FFN channels per layer
    for key, I in pruner.I_bar.items():
        keep = pruner.keep[key]
        assert int((~keep).sum()) == int(0.25 * I.numel())
        assert I[~keep].max() <= I[keep].min()
    first = {k: v.clone() for k, v in pruner.keep.items()}
    for key in pruner.I_bar:  # make the pruned groups look most important now
        pruner.I_bar[key] = torch.where(first[key], 0.0, 1e6)
    pruner.prune(0.5)
    for key, keep in pruner.keep.items():
        assert not (keep & ~first[key]).any()  # pruned stay pruned
        assert int((~keep).sum()) == int(0.5 * keep.numel())


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-llama", "tiny-t5", "tiny-gpt2"])
def test_training_reaches_target_sparsity_and_pruned_weights_no_longer_matter(arch):
    model, config = _model(arch, sparsity=0.5)
    losses = run_training("loraprune", model, config, steps=config.total_steps)
    assert losses[-1] < losses[0]
    for m in loraprune.prune_layers(model):
        if m.group:
            mask = m.out_mask if m.group[2] == "row" else m.in_mask
            assert mask.mean().item() == 0.5
    batch = batch_for(model)
    with torch.no_grad():
        out = model(**batch).logits
        for m in loraprune.prune_layers(model):  # scribble over everything the masks removed
            rows, cols = m.out_mask == 0, m.in_mask == 0
            W = linear_weight(m.base)  # (d_out, d_in), a view also for GPT-2's Conv1D
            W[rows] = 100.0
            W[:, cols] = 100.0
            m.B[rows] = 100.0
            m.A[:, cols] = 100.0
            if m.base.bias is not None:
                m.base.bias[rows] = 100.0
        torch.testing.assert_close(model(**batch).logits, out, atol=1e-5, rtol=1e-5)
