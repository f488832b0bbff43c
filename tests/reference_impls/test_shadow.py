"""ShadowPEFT-specific promises: the injection and gated update of one block and the auxiliary loss recomputed
from the equations, the shadow state threaded through the blocks, refusal of non-Llama models, and peft's
ShadowModel as the oracle on tiny Llama (peft wraps decoder blocks; it finds none in BERT or T5, and this
implementation is Llama-only).

peft registers update MLPs T and G in the last wrapped block too, although the state they produce is never
read; ours leaves them out, and the oracle test freezes peft's copies before comparing counts and gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from impl_cases import batch_for, fresh, logits, perturb
from reference_impls import shadow
from reference_impls._core import count_trainable

ATOL = RTOL = 1e-5


def _model(**kw):
    torch.manual_seed(0)
    model = shadow.apply(fresh("tiny-llama"), shadow.ShadowConfig(r=4, dropout=0.0, **kw))
    perturb(model)
    return model.eval()


def test_block_injects_the_discrepancy_and_gates_the_state_update():
    model = _model()
    block = model.model.layers[0]
    torch.manual_seed(1)
    h, s = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    injected = h + 0.1 * (h - s) @ block.down.weight.T @ block.up.weight.T
    torch.testing.assert_close(block.inject(h, s), injected)
    T = F.gelu(h @ block.transform[0].weight.T + block.transform[0].bias) @ block.transform[2].weight.T \
        + block.transform[2].bias
    g = torch.sigmoid(F.gelu(h @ block.gate[0].weight.T + block.gate[0].bias) @ block.gate[2].weight.T
                      + block.gate[2].bias)
    torch.testing.assert_close(block.update(h, s), (1 - g) * s + g * T)


def test_forward_threads_the_shadow_state_through_the_blocks():
    model = _model()
    batch = batch_for(model)
    inner = model.model
    with torch.no_grad():
        embeds = inner.embed_tokens(batch["input_ids"])
        s = model.shadow.backbone(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).last_hidden_state
        model.shadow.state.s = None  # the blocks' plain path: each frozen block by hand
        h = embeds
        pos = torch.arange(12)[None]
        rope = inner.rotary_emb(h, pos)
        mask = None
        for block in inner.layers:
            out = block.base(block.inject(h, s), attention_mask=mask, position_embeddings=rope, position_ids=pos)
            if not block.last:
                s = block.update(out, s)
            h = out
        expected = model.lm_head(inner.norm(h))
    torch.testing.assert_close(logits(model, batch), expected, atol=1e-5, rtol=1e-5)


def test_loss_adds_the_weighted_shadow_lm_loss_on_the_initial_state():
    model = _model(aux_loss_weight=0.3)
    batch = batch_for(model)
    with torch.no_grad():
        out = model(**batch)
        s0 = model.shadow.backbone(inputs_embeds=model.model.embed_tokens(batch["input_ids"]),
                                   attention_mask=batch["attention_mask"]).last_hidden_state
        aux = F.cross_entropy(model.lm_head(s0)[:, :-1].reshape(-1, 100), batch["labels"][:, 1:].reshape(-1))
        task = F.cross_entropy(out.logits[:, :-1].reshape(-1, 100), batch["labels"][:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, task + 0.3 * aux)


def test_count_is_blocks_plus_one_mirrored_layer_without_embeddings():
    model = shadow.apply(fresh("tiny-llama"), shadow.ShadowConfig(r=4))
    d, r, L = 32, 4, 2
    blocks = L * (2 * r * d + 2 * (d * r + r + r * d + d)) - 2 * (d * r + r + r * d + d)  # no T, G in the last
    layer = d * 32 + d * 16 + d * 16 + 32 * d + 3 * d * 64 + 2 * d  # q, k, v, o (GQA), gate/up/down, two norms
    assert count_trainable(model) == blocks + layer + d  # + the backbone's final norm


@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-t5", "tiny-gpt2"])
def test_other_architectures_are_refused(arch):
    with pytest.raises(ValueError, match="Llama-family causal LM"):
        shadow.apply(fresh(arch), shadow.ShadowConfig())


@pytest.mark.peft_oracle
def test_matches_peft_shadow():
    peft = pytest.importorskip("peft")
    ours = _model(aux_loss_weight=0.05)
    theirs = peft.get_peft_model(fresh("tiny-llama"), peft.ShadowConfig(task_type="CAUSAL_LM", r=4, shadow_dropout=0.0))
    tuner = theirs.base_model
    pairs = []
    for i, block in enumerate(ours.model.layers):
        layer = tuner.model.model.layers[i]
        pairs += [(block.down.weight, layer.shadow_down["default"].weight),
                  (block.up.weight, layer.shadow_up["default"].weight)]
        for mine, name in (("transform", "shadow_update_transform"), ("gate", "shadow_update_gate")):
            peft_mlp = getattr(layer, name)["default"]
            if block.last:
                peft_mlp.requires_grad_(False)  # never reached by a gradient in peft either
                continue
            pairs += list(zip(getattr(block, mine).parameters(), peft_mlp.parameters()))
    theirs_backbone = dict(tuner.shadow_backbone["default"].named_parameters())
    pairs += [(p, theirs_backbone[n]) for n, p in ours.shadow.backbone.named_parameters()]
    assert sum(p.numel() for p, _ in pairs) == count_trainable(ours) == theirs.get_nb_trainable_parameters()[0]
    with torch.no_grad():
        for mine, peft_p in pairs:
            peft_p.copy_(mine)
    batch = batch_for(ours)
    theirs.eval()
    torch.testing.assert_close(logits(ours, batch), logits(theirs, batch), atol=ATOL, rtol=RTOL)
    losses = []
    for model in (ours, theirs):
        model.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], atol=ATOL, rtol=RTOL)  # task + 0.05 x shadow LM loss
    for mine, peft_p in pairs:
        torch.testing.assert_close(mine.grad, peft_p.grad, atol=ATOL, rtol=1e-4)
