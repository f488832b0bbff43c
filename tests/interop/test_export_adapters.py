"""`peftkb export --to adapters`: AdapterHub config strings in adapters' grammar, mapped from the catalog.

`adapters` pins transformers 4.57 and cannot be installed beside the default 5.x stack, so the strings are
checked here against its documented grammar (`name[key=value,...]`, chunks joined by `|`, values Python
literals) and against the config classes' field names, read from adapters' source (commit 88f18eb)."""
from __future__ import annotations

import json

import pytest

from peftkb.errors import UsageError
from peftkb.interop.adapters_export import adapters_setup, config_string, parse_config_string
from peftkb.loader import load_catalog
from tests.conftest import run_cli

#: Fields of adapters' config classes (adapters/configuration/adapter_config.py at 88f18eb).
BN = {"reduction_factor", "non_linearity", "scaling", "use_gating", "inv_adapter_reduction_factor", "phm_dim", "phm_rank"}
FIELDS = {
    "seq_bn": BN, "double_seq_bn": BN, "par_bn": BN, "seq_bn_inv": BN, "compacter": BN, "compacter++": BN,
    "prefix_tuning": {"prefix_length", "bottleneck_size", "flat", "use_gating"},
    "prompt_tuning": {"prompt_length"},
    "lora": {"r", "alpha", "dropout", "attn_matrices", "selfattn_lora", "intermediate_lora", "output_lora", "use_gating"},
    "dora": {"r", "alpha", "dropout", "attn_matrices", "selfattn_lora", "intermediate_lora", "output_lora"},
    "ia3": {"attn_matrices", "selfattn_lora", "intermediate_lora", "output_lora"},
    "vera": {"r", "dropout", "vera_d", "attn_matrices", "selfattn_lora", "intermediate_lora", "output_lora"},
    "mtl_lora": {"r", "alpha", "attn_matrices", "selfattn_lora", "intermediate_lora", "output_lora"},
    "loreft": {"r", "prefix_positions", "suffix_positions", "tied_weights", "dropout"},
    "noreft": {"r", "prefix_positions", "suffix_positions", "tied_weights", "dropout"},
    "direft": {"r", "prefix_positions", "suffix_positions", "tied_weights", "dropout"},
}


def _methods() -> list[str]:
    return sorted(m.id for m in load_catalog().methods if m.implementations.adapters)


@pytest.fixture(scope="module")
def catalog():
    return {m.id: m for m in load_catalog().methods}


@pytest.mark.parametrize("method_id", _methods())
def test_every_adapterhub_method_exports_a_string_in_adapters_grammar(method_id, catalog):
    method = catalog[method_id]
    setup = adapters_setup(method, method.defaults(), d_model=768)
    parsed = parse_config_string(setup.config_string)
    assert parsed == setup.chunks  # the string says exactly what the dict says
    for name, kwargs in parsed:
        assert name in FIELDS, name
        assert set(kwargs) <= FIELDS[name], (name, set(kwargs) - FIELDS[name])


def test_a_bottleneck_width_becomes_adapters_reduction_factor(catalog):
    setup = adapters_setup(catalog["sequential-adapter"], {"bottleneck": 64, "activation": "gelu"}, d_model=768)
    assert setup.config_string == "double_seq_bn[reduction_factor=12.0,non_linearity='gelu']"


def test_lora_targets_become_adapters_matrices(catalog):
    setup = adapters_setup(catalog["lora"], {"r": 8, "alpha": 16, "target_modules": ["q", "k", "v", "up", "down"]})
    (name, kwargs), = setup.chunks
    assert name == "lora" and kwargs["attn_matrices"] == ["q", "k", "v"]
    assert kwargs["intermediate_lora"] is True and kwargs["output_lora"] is True


def test_unions_are_joined_with_a_bar(catalog):
    names = [name for name, _ in parse_config_string(adapters_setup(catalog["unipelt"], catalog["unipelt"].defaults())
                                                     .config_string)]
    assert names == ["lora", "prefix_tuning", "seq_bn"]


@pytest.mark.parametrize("bad", ["lora[r=8", "lora[r=]", "[r=8]", "lora[r=os.system('x')]"])
def test_the_grammar_refuses_malformed_strings(bad):
    with pytest.raises(UsageError):
        parse_config_string(bad)


def test_config_string_round_trips_literals():
    chunks = [("lora", {"r": 8, "alpha": 16.0, "attn_matrices": ["q", "v"], "use_gating": True})]
    assert parse_config_string(config_string(chunks)) == chunks


def test_cli_writes_the_string_and_a_script():
    done = run_cli("export", "pfeiffer-adapter", "--to", "adapters", "-m", "bert-base")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["config_string"].startswith("seq_bn[") and data["config"]["identifier"] == "seq_bn"
    refused = run_cli("export", "qlora", "--to", "adapters")
    assert refused.returncode == 2 and "no AdapterHub implementation" in refused.stderr
