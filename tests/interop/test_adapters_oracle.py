"""AdapterHub `adapters` as the oracle of `peftkb export --to adapters`: the exported config string, added to a
tiny BERT with `adapters.init` + `add_adapter` + `train_adapter`, trains exactly `peftkb params`.

adapters 1.3.0 pins transformers~=4.57.6, so it lives only in the transformers-4.57 environment of
`make test-legacy`; in the default (5.x) environment this module is skipped as a whole, and the strings
are checked against adapters' grammar by test_export_adapters.py instead."""
from __future__ import annotations

import warnings

import pytest

adapters = pytest.importorskip("adapters", reason="adapters pins transformers 4.57: run `make test-legacy`")
transformers = pytest.importorskip("transformers")

from peftkb.calculators.architecture import architecture_from_config  # noqa: E402
from peftkb.calculators.params import count_trainable  # noqa: E402
from peftkb.interop.adapters_export import adapters_setup  # noqa: E402
from peftkb.loader import load_catalog  # noqa: E402

BERT = dict(model_type="bert", hidden_size=128, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
            vocab_size=100, max_position_embeddings=64)
#: Settings that fit the tiny model (defaults assume d_model 768 or more).
TINY = {"mam-adapter": {"bottleneck": 16}, "parallel-adapter": {"bottleneck": 16}}
#: Where adapters trains a different set than the catalog formula counts, and why (reported, not hidden).
DIFFERS = {
    "mam-adapter": "adapters' MAM trains prefix tuning's reparameterisation MLP (bottleneck 800); the catalog formula "
                   "counts the prefix kept after training",
    "mtl-lora": "adapters' MTL-LoRA adds its task-specific up-projections and weights beyond the formula's terms",
    "unipelt": "adapters' UniPELT trains the prefix's reparameterisation MLP and the gates it adds to each part",
    "vera": "adapters 1.3.0 leaves VeRA's shared random matrices trainable; the method freezes them",
}


def _methods() -> list[str]:
    return sorted(m.id for m in load_catalog().methods if m.implementations.adapters and m.trainable_params)


@pytest.mark.parametrize("method_id", _methods())
def test_adapters_trains_exactly_what_peftkb_counts(method_id):
    if method_id in DIFFERS:
        pytest.xfail(DIFFERS[method_id])
    method = next(m for m in load_catalog().methods if m.id == method_id)
    values = {**method.defaults(), **TINY.get(method_id, {})}
    setup = adapters_setup(method, values, d_model=BERT["hidden_size"])
    model = transformers.BertModel(transformers.AutoConfig.for_model(**BERT))
    adapters.init(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.add_adapter("exported", config=setup.config_string)
        model.train_adapter("exported")
    theirs = sum(p.numel() for p in model.parameters() if p.requires_grad)
    ours = count_trainable(method, architecture_from_config(BERT), TINY.get(method_id, {})).trainable
    assert theirs == ours, setup.config_string
