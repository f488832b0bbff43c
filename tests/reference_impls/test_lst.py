"""LST-specific promises: the backbone's activations need no gradient and no gradient ever reaches the
backbone, the ladders feed every backbone layer to the side network, and the gates start at 1/2."""
from __future__ import annotations

import pytest
import torch

from impl_cases import batch_for, fresh
from reference_impls import lst
from reference_impls._composition import blocks


@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-llama"])
def test_backbone_activations_need_no_grad_and_gradients_never_reach_the_backbone(arch):
    model = lst.apply(fresh(arch), lst.LstConfig(reduction_factor=4))
    side = lst.side_network(model)
    backbone = side.base
    seen, backward_calls = [], []
    for _, block in blocks(model):
        block.register_forward_hook(lambda m, i, o: seen.append((o[0] if isinstance(o, tuple) else o).requires_grad))
        block.register_full_backward_hook(lambda m, gi, go: backward_calls.append(m))
    model.train()
    loss = model(**batch_for(model)).loss
    assert loss.requires_grad
    loss.backward()
    assert seen == [False] * len(blocks(model))  # no backbone activation is kept for backward
    assert backward_calls == []                  # backward never enters a backbone block
    assert all(p.grad is None for p in backbone.parameters())
    side_params = [p for n, p in side.named_parameters() if not n.startswith("base.")]
    assert side_params and all(p.grad is not None and p.requires_grad for p in side_params)


def test_side_network_width_gates_and_ladders():
    model = lst.apply(fresh("tiny-bert"), lst.LstConfig(reduction_factor=4))
    side = lst.side_network(model)
    L = model.config.num_hidden_layers
    assert len(side.ladders) == L + 1 and len(side.side) == L
    assert side.ladders[0].weight.shape == (8, 32) and side.up.weight.shape == (32, 8)
    assert torch.equal(side.gates(), torch.full((L,), 0.5))


def test_every_backbone_layer_reaches_the_output_through_its_ladder():
    model = lst.apply(fresh("tiny-llama"), lst.LstConfig(reduction_factor=4))
    side = lst.side_network(model)
    batch = batch_for(model)
    model.eval()
    with torch.no_grad():
        ref = model(**batch).logits
        for ladder in side.ladders:
            saved = ladder.weight.clone()
            ladder.weight.zero_()
            assert (model(**batch).logits - ref).abs().max() > 1e-3  # this backbone layer mattered
            ladder.weight.copy_(saved)
        # a gate pushed to 1 cuts the side stream below it: only the ladder's input passes
        side.alpha[-1] = 10.0
        assert (model(**batch).logits - ref).abs().max() > 1e-3


def test_output_is_the_backbone_output_plus_the_upsampled_side_output():
    base = fresh("tiny-bert")
    model = lst.apply(fresh("tiny-bert"), lst.LstConfig(reduction_factor=4))
    side = lst.side_network(model)
    batch = batch_for(model)
    model.eval()
    with torch.no_grad():
        assert (model(**batch).logits - base(**batch).logits).abs().max() > 1e-3
        side.up.weight.zero_()
        side.up.bias.zero_()  # no side contribution: the backbone's own prediction
        torch.testing.assert_close(model(**batch).logits, base(**batch).logits)


def test_encoder_decoder_backbones_are_refused():
    with pytest.raises(ValueError, match="encoder-decoder"):
        lst.apply(fresh("tiny-t5"), lst.LstConfig())


def test_side_network_recomputed_from_the_backbone_hidden_states():
    """s_0 = W_0 h_0 + b_0; s_i = f_i(μ_i s_{i-1} + (1 - μ_i)(W_i h_i + b_i)), μ_i = sigmoid(α_i / 0.1);
    y = h_L + W_up LN(s_L) + b_up (the authors' gate: μ weighs the side stream)."""
    model = lst.apply(fresh("tiny-bert"), lst.LstConfig(reduction_factor=4))
    side = lst.side_network(model)
    batch = batch_for(model)
    model.eval()
    with torch.no_grad():
        side.alpha.copy_(torch.tensor([0.05, -0.2])[: len(side.alpha)])
        h = side.base(**batch, output_hidden_states=True).hidden_states
        mask = batch["attention_mask"]
        s = side.ladders[0](h[0])
        for i, block in enumerate(side.side, start=1):
            mu = 1 / (1 + torch.exp(-side.alpha[i - 1] / 0.1))
            s = block(mu * s + (1 - mu) * side.ladders[i](h[i]), mask)
        expected = h[-1] + side.up(torch.nn.functional.layer_norm(s, s.shape[-1:], side.ln_out.weight,
                                                                  side.ln_out.bias, side.ln_out.eps))
        torch.testing.assert_close(side(**batch).last_hidden_state, expected)
