"""String hyperparameters with choices, and formulas that test them with if_eq: refused at file:line when wrong."""
from __future__ import annotations

import pytest

from peftkb.errors import CatalogError
from peftkb.loader import load_catalog
from tests.conftest import KB, ROOT, run_main


@pytest.fixture
def kb(kb: KB) -> KB:
    """The seed knowledge base plus RoAD (related to ia3, which the seed holds)."""
    kb.write("road.yaml", (ROOT / "catalog" / "road.yaml").read_text(encoding="utf-8"))
    (kb.root / "reference_impls" / "road.py").write_text("# placeholder for loader tests\n")
    load_catalog(kb.root, use_cache=False)  # valid as copied
    return kb


def _problem(kb: KB):
    with pytest.raises(CatalogError) as info:
        load_catalog(kb.root, use_cache=False)
    (problem,) = info.value.problems
    return problem


def _line_of(kb: KB, name: str, needle: str) -> int:
    return next(i for i, line in enumerate(kb.read(name).splitlines(), 1) if needle in line)


def test_a_formula_comparing_with_a_value_outside_the_choices_is_refused(kb: KB):
    kb.write("road.yaml", kb.read("road.yaml").replace('if_eq(variant, "road_2"', 'if_eq(variant, "road_3"'))
    problem = _problem(kb)
    assert problem.file == "catalog/road.yaml" and problem.field == "trainable_params.per_target"
    assert problem.line == _line_of(kb, "road.yaml", "per_target:")
    assert "'road_3' is not one of variant's choices (road_1, road_2, road_4)" in problem.message


def test_if_eq_needs_a_str_hyperparameter_that_declares_its_choices(kb: KB):
    kb.write("road.yaml", kb.read("road.yaml").replace("  choices: [road_1, road_2, road_4]\n", ""))
    problem = _problem(kb)
    assert problem.field == "trainable_params.per_target" and "str hyperparameter with choices" in problem.message


@pytest.mark.parametrize("old, new, message", [
    ("  default: road_1\n", "  default: road_9\n", "not one of the choices"),
    ("choices: [road_1, road_2, road_4]", "choices: [road_1, road_1, road_4]", "repeat"),
])
def test_choices_are_checked_against_the_default_and_for_repeats(kb: KB, old, new, message):
    kb.write("road.yaml", kb.read("road.yaml").replace(old, new, 1))
    problem = _problem(kb)
    assert problem.file == "catalog/road.yaml" and problem.field == "hyperparameters[0]"
    assert message in problem.message


def test_choices_on_a_number_are_refused(kb: KB):
    text = kb.read("road.yaml")
    kb.write("road.yaml", text.replace("  default: 64\n", "  default: 64\n  choices: [a, b]\n", 1))
    problem = _problem(kb)
    assert problem.field == "hyperparameters[1]" and "choices apply to str hyperparameters" in problem.message


@pytest.mark.parametrize("method, setting, expected", [
    ("road", "variant=road_2", "229,376"), ("road", "variant=road_4", "458,752"),
    ("miss", "init=mini", "229,376"), ("glora", "config_a_b=vector", "229,376"),
])
def test_params_follows_the_choice(method, setting, expected):
    extra = ["-s", "mini_r=64"] if method == "miss" else []
    code, out, err = run_main("params", method, "-m", "llama-3.2-3b", "-s", setting, *extra)
    assert code == 0 and f"{expected} trainable parameters" in out, err


def test_a_value_outside_the_choices_is_one_line_and_exit_2():
    code, out, err = run_main("params", "road", "-m", "llama-3.2-3b", "-s", "variant=road_3")
    assert code == 2 and "Traceback" not in out + err
    assert "variant='road_3' is not one of its choices: road_1, road_2, road_4" in err
