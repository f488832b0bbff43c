"""Every hyperparameter default in the catalog says where it comes from (paper, authors' code or a library
with its version), and every int or float hyperparameter says which values it allows, in the range grammar
of `peftkb.ranges`."""
from __future__ import annotations

import pytest

from peftkb.loader import find_root, load_catalog
from peftkb.model import Hyperparameter
from peftkb.ranges import Range, RangeError, range_problems

CATALOG = load_catalog(find_root())
NUMERIC = ("int", "float")


def unsourced(hyperparameters) -> list[str]:
    """Names of the hyperparameters that state a default without saying where it comes from."""
    return [h.name for h in hyperparameters if h.default is not None and h.source is None]


def unranged(hyperparameters) -> list[str]:
    """Names of the int and float hyperparameters without a range that parses."""
    bad = []
    for h in hyperparameters:
        if h.type not in NUMERIC:
            continue
        try:
            Range.parse(h.range)
        except RangeError:
            bad.append(h.name)
    return bad


def test_the_checks_catch_a_missing_source_and_a_missing_or_broken_range():
    sourced = Hyperparameter(name="r", type="int", default=8, meaning="rank", range="1..min(d_in, d_out)",
                             source={"kind": "library", "ref": "peft 0.21.2 LoraConfig.r"})
    no_source = Hyperparameter(name="alpha", type="float", default=16, meaning="scale", range="> 0")
    no_range = Hyperparameter(name="dropout", type="float", default=0.0, meaning="dropout",
                              source={"kind": "library", "ref": "peft 0.21.2 LoraConfig.lora_dropout"})
    bad_range = Hyperparameter(name="k", type="int", meaning="blocks", range="between 1 and 4")
    no_default = Hyperparameter(name="bottleneck", type="int", meaning="hidden size", range="1..d_model")
    listed = [sourced, no_source, no_range, bad_range, no_default]
    assert unsourced(listed) == ["alpha"]
    assert unranged(listed) == ["dropout", "k"]


@pytest.mark.parametrize("method", CATALOG.methods, ids=lambda m: m.id)
def test_every_default_has_a_source(method):
    missing = unsourced(method.hyperparameters)
    assert not missing, f"catalog/{method.id}.yaml: default without a source: {', '.join(missing)}"


@pytest.mark.parametrize("method", CATALOG.methods, ids=lambda m: m.id)
def test_every_int_and_float_hyperparameter_has_a_range(method):
    missing = unranged(method.hyperparameters)
    assert not missing, f"catalog/{method.id}.yaml: int/float without a range that parses: {', '.join(missing)}"


@pytest.mark.parametrize("method", CATALOG.methods, ids=lambda m: m.id)
def test_ranges_name_known_symbols_and_hold_their_defaults(method):
    assert range_problems(method.hyperparameters) == []
