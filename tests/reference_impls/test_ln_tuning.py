"""LN Tuning-specific promises: only the norms' gains train (a copy, the original kept), the tuned norm is
g ⊙ x / rms(x), merging swaps it in, other architectures are refused; peft's LN Tuning as the oracle."""
from __future__ import annotations

import pytest
import torch

from impl_cases import fresh, perturb, prepare
from peft_parity import assert_matches_peft
from reference_impls import ln_tuning
from reference_impls._core import count_trainable


def _norms(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ln_tuning.TunedNorm)]


def test_targets_both_block_norms_and_the_final_norm_and_train_only_their_gains():
    _, model, _ = prepare("ln-tuning", "tiny-llama")
    names = [n for n, _ in _norms(model)]
    assert names == ["model.layers.0.input_layernorm", "model.layers.0.post_attention_layernorm",
                     "model.layers.1.input_layernorm", "model.layers.1.post_attention_layernorm", "model.norm"]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == [f"{n}.tuned.weight" for n in names]
    assert count_trainable(model) == 5 * 32


def test_tuned_norm_is_gain_times_x_over_rms():
    _, model, _ = prepare("ln-tuning", "tiny-llama")
    perturb(model)
    _, norm = _norms(model)[0]
    x = torch.randn(2, 3, 32)
    eps = norm.tuned.variance_epsilon
    expected = norm.tuned.weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    torch.testing.assert_close(norm(x), expected, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(norm(x), norm.base(x))  # the frozen original differs after the change
    norm.merge()
    torch.testing.assert_close(norm(x), expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-t5", "tiny-gpt2"])
def test_other_architectures_are_refused_with_the_reason(arch):
    with pytest.raises(ValueError, match="LLaMA"):
        ln_tuning.apply(fresh(arch), ln_tuning.LNTuningConfig())


def _ln_link(mine, layer):
    return [(mine.tuned.weight, layer.ln_tuning_layers["default"].weight)]


@pytest.mark.peft_oracle
def test_matches_peft_ln_tuning():
    peft = pytest.importorskip("peft")
    config = ln_tuning.LNTuningConfig()
    ours = ln_tuning.apply(fresh("tiny-llama"), config)
    perturb(ours)
    names = [n for n, _ in _norms(ours)]
    theirs = peft.get_peft_model(fresh("tiny-llama"), peft.LNTuningConfig(target_modules=list(config.target_modules)))
    assert_matches_peft(ours, theirs, names, _ln_link, mergeable=True)
