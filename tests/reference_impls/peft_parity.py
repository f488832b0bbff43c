"""peft as the oracle for a reference implementation: the same parameters give the same outputs, the same
gradients and the same merged model.

A method's test builds its model (`ours`) and peft's (`theirs`) on two copies of the same tiny model, and
names which of our parameters is which of peft's with `link(our_layer, peft_layer)` per adapted module:
a list of (our parameter, peft's parameter) pairs, or (ours, peft's, view) where `view` (a reshape or
transpose) brings peft's tensor to our layout. `assert_matches_peft`
then copies ours into peft's, and asserts, in float32:

* the pairs cover every trainable parameter on both sides, so the two trainable counts are equal;
* identical logits (atol = rtol = 1e-5);
* identical gradients of every linked pair after one backward pass of the task loss;
* identical logits after merging, where the method merges.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from impl_cases import batch_for, logits
from reference_impls._core import count_trainable, merge

ATOL = RTOL = 1e-5
Link = Callable[[nn.Module, nn.Module], list[tuple]]


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def linked_pairs(ours: nn.Module, theirs: nn.Module, names: list[str], link: Link):
    """(our parameter, peft's parameter, view to our layout) for every linked pair."""
    inner = theirs.base_model.model
    pairs = [pair for name in names for pair in link(ours.get_submodule(name), inner.get_submodule(name))]
    unique: dict[int, tuple] = {}  # a parameter shared by several modules (Lily's A and B) is linked once
    for p in pairs:
        pair = (p[0], p[1], p[2] if len(p) == 3 else _same)
        assert unique.setdefault(id(p[0]), pair)[1] is p[1], "one of our parameters is linked to two of peft's"
    return list(unique.values())


def assert_matches_peft(ours: nn.Module, theirs: nn.Module, names: list[str], link: Link, *,
                        mergeable: bool, grad_names: list[str] | None = None) -> None:
    """`grad_names`: the modules whose gradients are compared (default: all of `names`); for a peft bug
    that corrupts some gradients, which the method's test then pins separately."""
    pairs = linked_pairs(ours, theirs, names, link)
    grad_pairs = pairs if grad_names is None else linked_pairs(ours, theirs, grad_names, link)
    for mine, peft_p, view in pairs:
        assert mine.shape == view(peft_p).shape, (mine.shape, peft_p.shape)
        assert mine.requires_grad and peft_p.requires_grad
    # every trainable parameter on either side is linked exactly once
    assert sum(p.numel() for p, _, _ in pairs) == count_trainable(ours) == count_trainable(theirs)
    assert theirs.get_nb_trainable_parameters()[0] == count_trainable(ours)
    assert len({id(p) for p, _, _ in pairs}) == len({id(q) for _, q, _ in pairs}) == len(pairs)

    with torch.no_grad():
        for mine, peft_p, view in pairs:
            view(peft_p).copy_(mine)
    batch = batch_for(ours)
    torch.testing.assert_close(logits(ours, batch), logits(theirs, batch), atol=ATOL, rtol=RTOL)

    for model in (ours, theirs):  # eval mode: no dropout on either side
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
    # some gradients may be exactly 0 (a scale on a zero bias), but not all of them
    assert max(mine.grad.abs().max() for mine, _, _ in grad_pairs) > 0
    for mine, peft_p, view in grad_pairs:
        torch.testing.assert_close(mine.grad, view(peft_p.grad), atol=ATOL, rtol=1e-4)

    if mergeable:
        merged_theirs = theirs.merge_and_unload()
        torch.testing.assert_close(logits(merge(ours), batch), logits(merged_theirs, batch), atol=ATOL, rtol=RTOL)
