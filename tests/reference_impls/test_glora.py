"""GLoRA-specific promises: the effective weight W0 + W0 ⊙ A + B and bias b0 + b0 ⊙ D + E + W0 C for each
path form, the bias paths only where there is a bias, merge; peft's GLoRA as the oracle."""
from __future__ import annotations

import pytest
import torch

from impl_cases import fresh, perturb
from peft_parity import assert_matches_peft
from reference_impls import glora
from reference_impls._core import count_trainable, find_targets


def _layer(bias=True, **forms):
    torch.manual_seed(0)
    kw = dict(r=2, config_a_b="lora", config_c="lora", config_d_e="constant") | forms
    layer = glora.GLoRALinear(torch.nn.Linear(6, 4, bias=bias).requires_grad_(False), **kw)
    with torch.no_grad():
        for p in layer.parameters():
            if p.requires_grad:
                p.normal_()
    return layer


@pytest.mark.parametrize("forms", [{}, dict(config_a_b="vector", config_c="vector", config_d_e="vector"),
                                   dict(config_a_b="constant", config_c="none", config_d_e="none")])
def test_forward_is_the_generalised_weight_and_bias(forms):
    layer = _layer(**forms)
    W0, b0 = layer.base.weight, layer.base.bias
    A, B, C, D, E = layer.A(), layer.B(), layer.C(), layer.D(), layer.E()
    W = W0 + W0 * A + B
    b = b0 + b0 * D + E + (W0 @ C).squeeze(-1) if isinstance(C, torch.Tensor) else b0 + b0 * D + E
    x = torch.randn(3, 6)
    torch.testing.assert_close(layer(x), x @ W.T + b, atol=1e-5, rtol=1e-5)


def test_bias_paths_exist_only_with_a_bias_and_the_count_follows():
    with_bias, without = _layer(bias=True), _layer(bias=False)
    assert count_trainable(without) == 2 * 2 * (6 + 4)            # A and B: the catalog's formula
    assert count_trainable(with_bias) == 2 * 2 * (6 + 4) + 2 * (6 + 1) + 2  # + C (r (d_in + 1)) + D, E


def test_starts_unchanged_and_merge_round_trip_restores_the_layer():
    fresh_layer = glora.GLoRALinear(torch.nn.Linear(6, 4), r=2, config_a_b="lora", config_c="lora",
                                    config_d_e="constant")
    x = torch.randn(3, 6)
    assert torch.equal(fresh_layer(x), fresh_layer.base(x))
    layer = _layer()
    W0, b0, out = layer.base.weight.clone(), layer.base.bias.clone(), layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), out, atol=1e-5, rtol=1e-5)
    layer.unmerge()
    assert torch.equal(layer.base.weight, W0) and torch.equal(layer.base.bias, b0)


def test_unknown_form_is_an_error():
    with pytest.raises(ValueError, match="config_c"):
        glora.GLoRALinear(torch.nn.Linear(6, 4), r=2, config_a_b="lora", config_c="constant", config_d_e="none")


def _path_pairs(mine, theirs):
    if mine.form == "lora":
        return [(mine.Xd, theirs.Xd), (mine.Xu, theirs.Xu)]
    if mine.form == "constant":
        return [(mine.X, theirs.X, lambda t: t.view(()))]
    return [(mine.X, theirs.X)] if mine.form == "vector" else []


def _glora_link(mine, layer):
    return [pair for name in "ABCDE" for pair in _path_pairs(getattr(mine, name), getattr(layer, f"glora_{name}")["default"])]


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch,forms", [("tiny-t5", {}), ("tiny-llama", {}), ("tiny-bert", {}),
                                        ("tiny-bert", dict(config_a_b="vector", config_c="vector", config_d_e="vector"))])
def test_matches_peft_glora(arch, forms):
    peft = pytest.importorskip("peft")
    config = glora.GLoRAConfig(r=4, **forms)
    ours = glora.apply(fresh(arch), config)
    perturb(ours)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.GloraConfig(
        r=4, config_A_B=config.config_a_b, config_C=config.config_c, config_D_E=config.config_d_e,
        target_modules=names))
    assert_matches_peft(ours, theirs, names, _glora_link, mergeable=True)
