"""LoRA-FA-specific promises: A stays frozen, backward keeps only the r-dimensional A x; peft as the oracle."""
from __future__ import annotations

import pytest
import torch

from impl_cases import batch_for, copy_lora_into_peft, fresh, logits, perturb, prepare, run_training
from reference_impls import lora, lora_fa
from reference_impls._core import count_trainable, find_targets

ATOL, RTOL = 1e-4, 1e-4  # float32 logits of magnitude ~5 along different summation orders (see test_common)


def _layers(model):
    return [m for m in model.modules() if isinstance(m, lora_fa.LoRAFALinear)]


def test_A_stays_frozen_while_B_trains():
    _, model, config = prepare("lora-fa", "tiny-llama")
    A0 = [m.A.detach().clone() for m in _layers(model)]
    B0 = [m.B.detach().clone() for m in _layers(model)]
    run_training("lora-fa", model, config, steps=3)
    for m, a, b in zip(_layers(model), A0, B0):
        assert not m.A.requires_grad and m.A.grad is None
        assert torch.equal(m.A, a)
        assert not torch.equal(m.B, b)


def test_A_is_reproducible_from_the_seed_and_differs_between_modules():
    one = lora_fa.apply(fresh("tiny-bert"), lora_fa.LoRAFAConfig(r=4))
    torch.manual_seed(123)  # the global RNG does not matter
    two = lora_fa.apply(fresh("tiny-bert"), lora_fa.LoRAFAConfig(r=4))
    for a, b in zip(_layers(one), _layers(two)):
        assert torch.equal(a.A, b.A)
    assert not torch.equal(_layers(one)[0].A, _layers(one)[1].A)
    other = lora_fa.apply(fresh("tiny-bert"), lora_fa.LoRAFAConfig(r=4, init_seed=7))
    assert not torch.equal(_layers(one)[0].A, _layers(other)[0].A)


def _saved_widths(layer: torch.nn.Module, x: torch.Tensor) -> list[tuple[int, int]]:
    """(numel, last dim) of the activations autograd keeps for backward (parameters excluded; linear may
    keep them flattened to 2-d)."""
    params = {p.data_ptr() for p in layer.parameters()}
    shapes = []

    def pack(t):
        if t.data_ptr() not in params:
            shapes.append((t.numel(), t.shape[-1]))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x).sum().backward()
    return shapes


def test_backward_keeps_A_x_instead_of_the_full_input():
    d_in, d_out, r = 64, 48, 4
    x = torch.randn(2, 5, d_in, requires_grad=True)  # x needs a gradient, as inside a deep model
    fa = lora_fa.LoRAFALinear(torch.nn.Linear(d_in, d_out).requires_grad_(False), r=r, alpha=8, seed=0)
    plain = lora.LoRALinear(torch.nn.Linear(d_in, d_out).requires_grad_(False), r=r, alpha=8)
    assert (10 * d_in, d_in) not in _saved_widths(fa, x)  # LoRA-FA: x itself is not kept ...
    assert (10 * r, r) in _saved_widths(fa, x)            # ... only z = A x (for B's gradient)
    assert (10 * d_in, d_in) in _saved_widths(plain, x)   # LoRA keeps x for A's gradient


@pytest.mark.peft_oracle
@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-llama"])
def test_matches_peft_lorafa_count_and_outputs(arch):
    peft = pytest.importorskip("peft")
    from peft.optimizers import create_lorafa_optimizer

    config = lora_fa.LoRAFAConfig(r=4, alpha=8)
    ours = lora_fa.apply(fresh(arch), config)
    perturb(ours)
    names = [t.name for t in find_targets(fresh(arch), config.target_modules)]
    theirs = peft.get_peft_model(fresh(arch), peft.LoraConfig(r=config.r, lora_alpha=config.alpha,
                                                              lora_dropout=0.0, target_modules=names))
    create_lorafa_optimizer(theirs, r=config.r, lora_alpha=config.alpha, lr=1e-3)  # freezes every lora_A
    assert theirs.get_nb_trainable_parameters()[0] == count_trainable(ours)
    copy_lora_into_peft(ours, theirs, names)
    batch = batch_for(ours)
    torch.testing.assert_close(logits(ours, batch), logits(theirs, batch), atol=ATOL, rtol=RTOL)


def test_forward_and_B_gradient_follow_the_equation():
    """h = W0 x + (alpha / r) B A x and ∂L/∂B = (alpha / r) Σ_tokens g (A x)ᵀ; A gets no gradient."""
    d_in, d_out, r, alpha = 6, 5, 2, 3.0
    base = torch.nn.Linear(d_in, d_out).requires_grad_(False)
    layer = lora_fa.LoRAFALinear(base, r=r, alpha=alpha, seed=0)
    with torch.no_grad():
        layer.B.normal_()
    x = torch.randn(3, 4, d_in)
    h = layer(x)
    z = x @ layer.A.T  # (3, 4, r)
    torch.testing.assert_close(h, x @ base.weight.T + base.bias + (alpha / r) * z @ layer.B.T)
    g = torch.randn_like(h)
    (h * g).sum().backward()
    expected = (alpha / r) * torch.einsum("bto,btr->or", g, z)
    torch.testing.assert_close(layer.B.grad, expected)
    assert layer.A.grad is None
