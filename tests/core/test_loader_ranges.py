"""The loader checks every declared hyperparameter range (the grammar of peftkb.ranges), at file:line."""
from __future__ import annotations

import pytest

from peftkb.errors import CatalogError
from peftkb.loader import load_catalog
from tests.conftest import KB


@pytest.mark.parametrize("bad, message", [
    ("'(0, infx)'", "unknown symbol"),
    ("'[1, '", "range"),
])
def test_a_range_that_does_not_parse_is_refused_at_its_line(kb: KB, bad, message):
    text = kb.read("lora.yaml")
    first = next(line for line in text.splitlines() if line.strip().startswith("range:"))
    kb.write("lora.yaml", text.replace(first, first.split("range:")[0] + f"range: {bad}", 1))
    with pytest.raises(CatalogError) as info:
        load_catalog(kb.root, use_cache=False)
    (problem,) = info.value.problems
    assert problem.file == "catalog/lora.yaml" and problem.field.endswith(".range")
    assert problem.line == next(i for i, line in enumerate(kb.read("lora.yaml").splitlines(), 1) if bad in line)
    assert message in problem.message


def test_the_real_ranges_all_parse(kb: KB):
    assert load_catalog(kb.root, use_cache=False).methods
