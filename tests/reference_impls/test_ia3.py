"""(IA)³-specific promises, and peft's IA3 as the oracle."""
from __future__ import annotations

import pytest
import torch

from impl_cases import batch_for, fresh, logits, perturb
from reference_impls import ia3
from reference_impls._core import count_trainable, find_targets

ATOL, RTOL = 1e-4, 1e-4  # float32 logits of magnitude ~5 along different summation orders (see test_common)


def test_feedforward_vector_rescales_the_input_of_down():
    model = ia3.apply(fresh("tiny-llama"), ia3.IA3Config())
    down = model.model.layers[0].mlp.down_proj
    assert down.scale_input and down.l.shape == (64,)  # d_ff
    with torch.no_grad():
        down.l.uniform_(0.5, 1.5)
    x = torch.randn(2, 64)
    torch.testing.assert_close(down(x), down.base(x * down.l), atol=1e-6, rtol=1e-6)


def test_gpt2_rescales_the_whole_fused_qkv_projection_as_peft():
    model = ia3.apply(fresh("tiny-gpt2"), ia3.IA3Config())
    c_attn = model.transformer.h[0].attn.c_attn
    assert c_attn.l.shape == (96,)  # q, k and v of d_model = 32 each
    with torch.no_grad():
        c_attn.l.uniform_(0.5, 1.5)
    x = torch.randn(2, 32)
    torch.testing.assert_close(c_attn(x), c_attn.base(x) * c_attn.l, atol=1e-6, rtol=1e-6)


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-t5", "tiny-llama", "tiny-gpt2"])
def test_matches_peft_count_and_outputs(arch):
    peft = pytest.importorskip("peft")
    config = ia3.IA3Config()
    ours = ia3.apply(fresh(arch), config)
    perturb(ours, std=0.5)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    ff_names = [t.name for t in find_targets(fresh(arch), config.feedforward_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.IA3Config(target_modules=names, feedforward_modules=ff_names))
    assert theirs.get_nb_trainable_parameters()[0] == count_trainable(ours)

    inner = theirs.base_model.model
    with torch.no_grad():
        for name in names:
            vector = inner.get_submodule(name).ia3_l["default"]  # (d_out, 1), or (1, d_in) for feedforward
            vector.copy_(ours.get_submodule(name).l.view_as(vector))
    batch = batch_for(ours)
    torch.testing.assert_close(logits(ours, batch), logits(theirs, batch), atol=ATOL, rtol=RTOL)
