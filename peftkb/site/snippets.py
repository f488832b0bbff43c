"""The library snippets of a method page: a peft config call and an AdapterHub call with catalog defaults."""
from __future__ import annotations

import json
import re
from typing import Any

from peftkb.model import Method
from peftkb.site.model import ROLE_MODULES

# Catalog hyperparameter name -> keyword of the peft config class, for the snippet on method pages.
# Only names listed here are emitted; tests check each keyword against the installed peft.
PEFT_KWARGS: dict[str, dict[str, str]] = {
    "LoraConfig": {"r": "r", "alpha": "lora_alpha", "dropout": "lora_dropout", "target_modules": "target_modules"},
    "AdaLoraConfig": {"init_r": "init_r", "target_r": "target_r", "alpha": "lora_alpha", "dropout": "lora_dropout",
                      "beta1": "beta1", "beta2": "beta2", "orth_reg_weight": "orth_reg_weight",
                      "tinit": "tinit", "tfinal": "tfinal", "delta_t": "deltaT", "total_step": "total_step",
                      "target_modules": "target_modules"},
    "IA3Config": {"target_modules": "target_modules"},
    "PrefixTuningConfig": {"n_virtual_tokens": "num_virtual_tokens", "prefix_projection": "prefix_projection",
                           "projection_hidden": "encoder_hidden_size"},
    "PromptTuningConfig": {"n_virtual_tokens": "num_virtual_tokens"},
    "PromptEncoderConfig": {"n_virtual_tokens": "num_virtual_tokens", "encoder_hidden": "encoder_hidden_size"},
    "LoHaConfig": {"r": "r", "alpha": "alpha", "target_modules": "target_modules"},
    "LoKrConfig": {"r": "r", "alpha": "alpha", "target_modules": "target_modules"},
    "VeraConfig": {"r": "r", "dropout": "vera_dropout", "d_initial": "d_initial", "target_modules": "target_modules"},
    "OFTConfig": {"r": "r", "block_size": "oft_block_size", "target_modules": "target_modules"},
    "BOFTConfig": {"block_size": "boft_block_size", "block_num": "boft_block_num",
                   "n_butterfly_factor": "boft_n_butterfly_factor", "dropout": "boft_dropout",
                   "target_modules": "target_modules"},
    "LNTuningConfig": {"target_modules": "target_modules"},
    "FourierFTConfig": {"n_frequency": "n_frequency", "scaling": "scaling", "target_modules": "target_modules"},
    "HRAConfig": {"r": "r", "target_modules": "target_modules"},
    "VBLoRAConfig": {"r": "r", "num_vectors": "num_vectors", "vector_length": "vector_length", "topk": "topk",
                     "target_modules": "target_modules"},
    "AdaptionPromptConfig": {"adapter_len": "adapter_len", "adapter_layers": "adapter_layers"},
}
# values a config needs that are not method hyperparameters: (keyword, value, comment)
PEFT_REQUIRED: dict[str, list[tuple[str, str, str]]] = {
    "AdaLoraConfig": [("total_step", "1000", "number of training steps; AdaLoRA schedules its budget over them")],
}


def _py_literal(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # a valid Python string literal
    if isinstance(value, list):
        return "[" + ", ".join(_py_literal(v) for v in value) + "]"
    return repr(value)


def _short(text: str, limit: int = 48) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "…"


def peft_snippet(m: Method) -> str | None:
    """A `LoraConfig(...)`-style snippet with the catalog defaults, or None when peft has no such method."""
    impl = m.implementations.peft
    if impl is None:
        return None
    config = impl.config or ""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", config):
        config = ""
    lines = []
    option = impl.option or ""
    option_kwarg = re.fullmatch(r"([a-z_][a-z0-9_]*)\s*=\s*(True|False|[0-9.]+|\"[^\"]*\"|'[^']*')", option)
    if not config:
        lines.append(f"# peft type {impl.peft_type}; see the peft documentation for its config class")
        return "\n".join(lines)
    kwargs: list[tuple[str, str, str]] = []
    mapping = PEFT_KWARGS.get(config, {})
    for h in m.hyperparameters:
        kw = mapping.get(h.name)
        if kw is None or h.default is None:
            continue
        value = h.default
        if h.name == "target_modules" and isinstance(value, list):
            value = [ROLE_MODULES.get(v, v) for v in value]
        kwargs.append((kw, _py_literal(value), _short(h.meaning)))
    if config == "IA3Config":  # IA3 needs to know which targets are feed-forward (scaled on their input)
        targets = next((h.default for h in m.hyperparameters if h.name == "target_modules"), None) or []
        ff = [ROLE_MODULES.get(t, t) for t in targets if t in ("up", "gate", "down")]
        if ff:
            kwargs.append(("feedforward_modules", _py_literal(ff), "targets scaled on their input"))
    have = {k for k, _, _ in kwargs}
    kwargs += [item for item in PEFT_REQUIRED.get(config, []) if item[0] not in have]
    if option_kwarg and option_kwarg.group(1) not in have:
        kwargs.append((option_kwarg.group(1), option_kwarg.group(2), "turns this method on"))
    kwargs.insert(0, ("task_type", '"CAUSAL_LM"', "or SEQ_2_SEQ_LM, SEQ_CLS, ..."))
    unmapped = [h.name for h in m.hyperparameters if h.name not in mapping and h.default is not None]
    lines.append(f"from peft import {config}, get_peft_model")
    lines.append("")
    if option and not option_kwarg:
        lines.append("# " + " ".join(option.split()))
    lines.append(f"config = {config}(")
    width = max((len(f"    {k}={v},") for k, v, _ in kwargs), default=0)
    for k, v, comment in kwargs:
        text = f"    {k}={v},"
        lines.append(f"{text.ljust(width)}  # {' '.join(comment.split())}" if comment else text)
    lines.append(")")
    if unmapped:
        lines.append(f"# not set above (no known {config} keyword): {', '.join(unmapped)}")
    lines.append("model = get_peft_model(model, config)  # model: a transformers model")
    if any(k == "target_modules" for k, _, _ in kwargs):
        lines.insert(2, "# module names as in LLaMA-style models; use your architecture's names")
    return "\n".join(lines)


def adapters_snippet(m: Method) -> str | None:
    if not m.implementations.adapters:
        return None
    lines = ["import adapters", "", "adapters.init(model)  # model: a transformers model"]
    for a in m.implementations.adapters:
        name = re.sub(r"[^a-z0-9_]", "_", m.id.lower())
        lines.append(f"model.add_adapter({json.dumps(name)}, config={json.dumps(a.config)})")
    lines.append(f"model.train_adapter({json.dumps(re.sub(r'[^a-z0-9_]', '_', m.id.lower()))})"
                 "  # freezes the model, trains the adapter")
    return "\n".join(lines)
