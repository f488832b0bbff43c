"""A user's peft `adapter_config.json` read back into the catalog: which method it is, with which settings.

The inverse of `peft_export`: the PeftType (and, for LoRA, the option fields that make a method of their
own: use_dora, use_rslora, use_qalora, init_lora_weights='pissa', ...) names the catalog entry; peft's
field names become the entry's hyperparameter names; module names become target roles. No peft import:
an adapter_config.json is plain JSON.
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

from peftkb.errors import UsageError

MAX_CONFIG_BYTES = 1_000_000  # an adapter_config.json is a few kB
#: module names (the last dotted part) of the families peftkb knows -> target roles
MODULE_ROLES = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate", "up_proj": "up",
                "down_proj": "down", "query": "q", "key": "k", "value": "v", "q": "q", "k": "k", "v": "v", "o": "o",
                "wi": "up", "wi_0": "gate", "wi_1": "up", "wo": "down", "c_attn": "q", "dense_h_to_4h": "up",
                "dense_4h_to_h": "down"}
ROLE_ORDER = ("q", "k", "v", "o", "gate", "up", "down")
#: catalog hyperparameter name -> peft config field names tried after the name itself
PEFT_FIELDS = {"alpha": ("lora_alpha", "alpha"), "dropout": ("lora_dropout", "dropout", "module_dropout"),
               "group_size": ("qalora_group_size",),
               "n_virtual_tokens": ("num_virtual_tokens",), "n_frozen_tokens": ("num_frozen_tokens",),
               "stride_a": ("stride_A",), "num_b": ("num_B",), "shadow_layers": ("shadow_num_hidden_layers",),
               "projection_hidden": ("encoder_hidden_size",)}


def read_peft_config(path: Path) -> dict[str, Any]:
    """The JSON of an adapter_config.json (or of the one inside a folder); UsageError naming the file otherwise."""
    file = path / "adapter_config.json" if path.is_dir() else path
    if not file.is_file():
        raise UsageError(f"{file}: no such file (give a peft adapter_config.json or the folder holding one)")
    size = file.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise UsageError(f"{file}: {size:,} bytes is not a peft adapter config (the limit is {MAX_CONFIG_BYTES:,})")
    try:
        data = json.loads(file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UsageError(f"{file}: not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{file}:{exc.lineno}:{exc.colno}: not JSON: {exc.msg}") from None
    except RecursionError:
        raise UsageError(f"{file}: nested too deeply to be a peft adapter config") from None
    if not isinstance(data, dict) or not isinstance(data.get("peft_type"), str):
        raise UsageError(f"{file}: a peft adapter config is a JSON object with a 'peft_type' string")
    return data


def _option_matches(option: str | None, config: dict[str, Any]) -> bool | None:
    """Whether every `key=value` of a catalog option holds in the config (None: the option has none)."""
    pairs = re.findall(r"(\w+)\s*=\s*('[^']*'|True|False|\d+)", option or "")
    if not pairs:
        return None
    return all(config.get(key) == ast.literal_eval(raw) for key, raw in pairs)


def method_of(config: dict[str, Any], catalog: Any) -> tuple[str | None, str]:
    """(catalog id, reason) for a peft config; the id is None when no entry fits, with the reason."""
    peft_type = config.get("peft_type")
    entries = [m for m in catalog.methods if m.implementations.peft and m.implementations.peft.peft_type == peft_type]
    if not entries:
        return None, f"no catalog entry implements PeftType {peft_type!r}"
    with_option = [m for m in entries if _option_matches(m.implementations.peft.option, config)]
    if len(with_option) == 1:
        return with_option[0].id, f"{peft_type} with {with_option[0].implementations.peft.option}"
    init = config.get("init_lora_weights")
    if peft_type == "LORA" and isinstance(init, str) and init.lower() not in ("gaussian", "true"):
        return None, f"LoraConfig init_lora_weights={init!r}: no catalog entry names this initialisation"
    plain = [m for m in entries if _option_matches(m.implementations.peft.option, config) is None
             and not (m.implementations.peft.option or "").strip()]
    if len(plain) == 1:
        return plain[0].id, f"the catalog's entry for PeftType {peft_type}"
    return None, f"PeftType {peft_type} names {len(entries)} catalog entries and the config tells none apart"


def roles_of(targets: Any) -> Any:
    """peft's target_modules as catalog roles where every name is a known linear module; as given otherwise."""
    if isinstance(targets, list) and targets and all(t.rsplit(".", 1)[-1] in MODULE_ROLES for t in targets):
        roles = {MODULE_ROLES[t.rsplit(".", 1)[-1]] for t in targets}
        return [r for r in ROLE_ORDER if r in roles]
    return targets


#: (method, catalog hyperparameter) -> (peft config field, how peft's values read in the catalog's choices), where a
#: name is the method's own: MiSS's init_weights=True is the balance variant
METHOD_FIELDS: dict[tuple[str, str], tuple[str, dict[Any, str]]] = {
    ("miss", "init"): ("init_weights", {True: "balance"}),
    ("glora", "config_a_b"): ("config_A_B", {}), ("glora", "config_c"): ("config_C", {}),
    ("glora", "config_d_e"): ("config_D_E", {}),
}


def settings_of(method: Any, config: dict[str, Any], derived: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config's values of the method's catalog hyperparameters (`derived` wins where given)."""
    out: dict[str, Any] = {}
    for h in method.hyperparameters:
        if derived and derived.get(h.name) is not None:
            out[h.name] = derived[h.name]
            continue
        if h.name == "target_modules":
            if config.get("target_modules") is not None:
                out["target_modules"] = roles_of(config["target_modules"])
            continue
        if (method.id, h.name) in METHOD_FIELDS:
            field, values = METHOD_FIELDS[(method.id, h.name)]
            value = config.get(field)
            if value is not None and not isinstance(value, (dict, list)):
                out[h.name] = values.get(value, value)
            continue
        for field in (h.name, *PEFT_FIELDS.get(h.name, ())):
            if field in config and config[field] is not None and not isinstance(config[field], dict):
                out[h.name] = config[field]
                break
    if method.id == "trainable-tokens" and isinstance(config.get("token_indices"), list):
        out["n_tokens"] = len(config["token_indices"])
    return out
