"""A catalog entry as an AdapterHub `adapters` configuration: a config string and the dict it stands for.

`adapters` names each method by an identifier of its ADAPTER_CONFIG_MAP (seq_bn, double_seq_bn, par_bn,
lora, prefix_tuning, ...; the entry's `implementations.adapters.config`) and takes overrides in a config
string, `name[key=value,key=value]`, several joined by `|` into a union (adapters' `utils.py`,
ADAPTER_CONFIG_STRING_PATTERN and parse_adapter_config_string, read at commit 88f18eb of
github.com/adapter-hub/adapters). The catalog's hyperparameters are mapped to the config classes'
fields below; a bottleneck width becomes adapters' reduction factor d_model / bottleneck.

`adapters` 1.x pins transformers 4.57, so it cannot be installed beside the default 5.x stack: strings
are checked against the grammar here, and against the library itself in the transformers-4.57 run.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from peftkb.errors import UsageError

#: adapters' grammar of one config-string chunk (the same pattern as its ADAPTER_CONFIG_STRING_PATTERN).
CHUNK = re.compile(r"^(?P<name>[^\[\]\|\n]+)(?:\[(?P<kvs>.*)\])?$")
ROLE_TO_MATRIX = {"q": "q", "k": "k", "v": "v"}


def _activation(value: str) -> str:
    return {"silu": "swish"}.get(value, value)


def _bn(values: dict[str, Any], d_model: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if values.get("reduction_factor") is not None:
        out["reduction_factor"] = values["reduction_factor"]
    elif values.get("bottleneck"):
        out["reduction_factor"] = d_model / values["bottleneck"]
    if values.get("activation"):
        out["non_linearity"] = _activation(values["activation"])
    if values.get("scaling") is not None and not isinstance(values["scaling"], str):
        out["scaling"] = float(values["scaling"])
    if values.get("inv_reduction_factor") is not None:
        out["inv_adapter_reduction_factor"] = values["inv_reduction_factor"]
    return out


def _lora(values: dict[str, Any], d_model: int) -> dict[str, Any]:
    out = {k: values[k] for k in ("r", "alpha", "dropout") if values.get(k) is not None}
    roles = values.get("target_modules") or []
    if roles:
        out["attn_matrices"] = [ROLE_TO_MATRIX[r] for r in roles if r in ROLE_TO_MATRIX]
        out["selfattn_lora"] = bool(out["attn_matrices"])
        out["intermediate_lora"] = any(r in ("up", "gate") for r in roles)
        out["output_lora"] = "down" in roles
    return out


def _ia3(values: dict[str, Any], d_model: int) -> dict[str, Any]:
    """(IA)3's l_ff rescales the FFN's inner activation: adapters puts it on the intermediate (up) output."""
    roles = values.get("target_modules") or []
    out: dict[str, Any] = {"attn_matrices": [ROLE_TO_MATRIX[r] for r in roles if r in ROLE_TO_MATRIX]}
    out["selfattn_lora"] = bool(out["attn_matrices"])
    out["intermediate_lora"] = any(r in ("up", "gate", "down") for r in roles)
    out["output_lora"] = False
    return out


def _vera(values: dict[str, Any], d_model: int) -> dict[str, Any]:
    out = _lora(values, d_model)
    if values.get("d_initial") is not None:
        out["vera_d"] = values["d_initial"]
    return out


def _prefix(values: dict[str, Any], d_model: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if values.get("n_virtual_tokens") is not None:
        out["prefix_length"] = values["n_virtual_tokens"]
    if values.get("prefix_projection") is False:
        out["flat"] = True
    if values.get("projection_hidden") is not None:
        out["bottleneck_size"] = values["projection_hidden"]
    return out


def _prompt(values: dict[str, Any], d_model: int) -> dict[str, Any]:
    return {"prompt_length": values["n_virtual_tokens"]} if values.get("n_virtual_tokens") is not None else {}


def _reft(values: dict[str, Any], d_model: int) -> dict[str, Any]:
    return {k: values[k] for k in ("r", "prefix_positions", "suffix_positions", "tied_weights", "dropout")
            if values.get(k) is not None}


def _compacter(values: dict[str, Any], d_model: int) -> dict[str, Any]:
    out = _bn(values, d_model)
    out.update({k: values[k] for k in ("phm_dim", "phm_rank") if values.get(k) is not None})
    return out


def _mam(values: dict[str, Any], d_model: int) -> list[tuple[str, dict[str, Any]]]:
    # adapters' MAMConfig: prefix tuning (bottleneck_size 800) | a parallel adapter on the FFN
    prefix = _prefix(values, d_model)
    prefix.setdefault("bottleneck_size", 800)
    return [("prefix_tuning", prefix), ("par_bn", _bn(values, d_model))]


def _unipelt(values: dict[str, Any], d_model: int) -> list[tuple[str, dict[str, Any]]]:
    # adapters' UniPELTConfig: gated LoRA | gated prefix tuning | gated sequential bottleneck adapter
    lora = {k: values[k] for k in ("r", "alpha") if values.get(k) is not None}
    prefix = _prefix(values, d_model)
    bn = _bn(values, d_model)
    return [("lora", {**lora, "use_gating": True}), ("prefix_tuning", {**prefix, "use_gating": True}),
            ("seq_bn", {**bn, "use_gating": True})]


#: config identifier -> how catalog values become that config's fields
MAPPERS: dict[str, Callable[[dict[str, Any], int], Any]] = {
    "seq_bn": _bn, "double_seq_bn": _bn, "par_bn": _bn, "scaled_par_bn": _bn, "seq_bn_inv": _bn,
    "double_seq_bn_inv": _bn, "compacter": _compacter, "compacter++": _compacter, "prefix_tuning": _prefix,
    "prefix_tuning_flat": _prefix, "prompt_tuning": _prompt, "lora": _lora, "dora": _lora, "ia3": _ia3,
    "vera": _vera, "mtl_lora": _lora, "loreft": _reft, "noreft": _reft, "direft": _reft, "mam": _mam,
    "unipelt": _unipelt,
}


def _literal(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return repr(value)
    return repr(value)


def config_string(chunks: list[tuple[str, dict[str, Any]]]) -> str:
    """`name[k=v,...]|name[...]`, values as Python literals (what adapters' parser evaluates)."""
    parts = []
    for name, kwargs in chunks:
        inner = ",".join(f"{k}={_literal(v)}" for k, v in kwargs.items())
        parts.append(f"{name}[{inner}]" if inner else name)
    return "|".join(parts)


def parse_config_string(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Parse a config string by adapters' documented grammar (for tests and for reading users' strings)."""
    import ast

    out = []
    for chunk in text.split("|"):
        match = CHUNK.match(chunk.strip())
        if not match or not match.group("name"):
            raise UsageError(f"invalid adapters config string chunk: {chunk!r}")
        kvs = re.sub(r"(\w+)=", r"'\1':", match.group("kvs") or "")
        try:
            kwargs = ast.literal_eval("{" + kvs + "}")
        except (ValueError, SyntaxError):
            raise UsageError(f"invalid adapters configuration {kvs!r} in {match.group('name')!r}") from None
        out.append((match.group("name").strip(), kwargs))
    return out


@dataclass
class AdaptersSetup:
    method: str
    identifier: str
    chunks: list[tuple[str, dict[str, Any]]]
    notes: list[str] = field(default_factory=list)

    @property
    def config_string(self) -> str:
        return config_string(self.chunks)

    @property
    def config(self) -> dict[str, Any] | list[dict[str, Any]]:
        dicts = [{"identifier": name, **kwargs} for name, kwargs in self.chunks]
        return dicts[0] if len(dicts) == 1 else dicts

    def python_script(self, model_path: str = "PATH/TO/MODEL") -> str:
        return "\n".join([
            f'"""{self.method} with AdapterHub adapters: exported by `peftkb export {self.method} --to adapters`."""',
            "import adapters",
            "from transformers import AutoModel", "",
            f"model = AutoModel.from_pretrained({model_path!r})",
            "adapters.init(model)",
            f"model.add_adapter({self.method!r}, config={self.config_string!r})",
            f"model.train_adapter({self.method!r})  # freeze the base, train only this adapter",
            "print(sum(p.numel() for p in model.parameters() if p.requires_grad), 'trainable parameters')", ""])


def adapters_setup(method: Any, values: dict[str, Any], d_model: int = 768) -> AdaptersSetup:
    impl = method.implementations.adapters
    if not impl:
        raise UsageError(f"'{method.id}' has no AdapterHub implementation in the catalog; try --to peft")
    identifier = impl[0].config if isinstance(impl, list) else impl.config
    mapper = MAPPERS.get(identifier)
    if mapper is None:
        raise UsageError(f"no mapping of catalog hyperparameters onto adapters' '{identifier}' config")
    mapped = mapper(values, d_model)
    chunks = mapped if isinstance(mapped, list) else [(identifier, mapped)]
    setup = AdaptersSetup(method.id, identifier, chunks)
    used = {"reduction_factor", "bottleneck", "activation", "scaling", "inv_reduction_factor", "r", "alpha", "dropout",
            "target_modules", "d_initial", "n_virtual_tokens", "prefix_projection", "projection_hidden",
            "prefix_positions", "suffix_positions", "tied_weights", "phm_dim", "phm_rank"}
    unmapped = sorted(k for k, v in values.items() if v is not None and k not in used)
    if unmapped:
        setup.notes.append(f"catalog hyperparameters with no field in adapters' {identifier}: " + ", ".join(unmapped)
                           + " (adapters' own defaults apply)")
    return setup
