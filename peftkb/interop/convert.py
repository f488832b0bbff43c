"""Trained adapters between a `peftkb train` output folder and a peft adapter folder, in both directions.

For the methods whose reference implementation computes exactly what peft computes, the trained tensors
are renamed (and, where the layouts differ, reshaped) one to one:

    method          reference tensor (module M)     peft tensor (saved adapter)                 layout
    lora            M.A (r, d_in), M.B (d_out, r)    M.lora_A.weight, M.lora_B.weight            same
    dora            M.A, M.B as LoRA, M.m (d_out,)   ... and M.lora_magnitude_vector (d_out,)     same
    loha            M.B1, M.A1, M.B2, M.A2           M.hada_w1_a, hada_w1_b, hada_w2_a, hada_w2_b same
    vera            M.d (r,), M.b (d_out,)           M.vera_lambda_d, M.vera_lambda_b             same; the shared
                                                     A and B are regenerated from projection_prng_key on both
                                                     sides (bitwise equal, tested in test_vera.py)
    adalora         M.Q (r, d_in), M.P (d_out, r),   M.lora_A, M.lora_B, M.lora_E (r, 1)          Λ as a column
                    M.Lambda (r,)
    ia3             M.l (n,)                         M.ia3_l: (d_out, 1), or (1, d_in) for a      a column or a row
                                                     feedforward module
    prompt-tuning   prompt (P, d_model)              prompt_embeddings (P, d_model)              same
    prefix-tuning   prefix_encoder.prefix            prompt_embeddings (P, 2·L·d_kv)             same (the MLP dropped)

peft's saved keys are `base_model.model.<module name>...`; the module names are the transformers model's
own, the same on both sides. The adapter_config.json is written from the run's method config with the
same name mapping as `peftkb export`, and `--from peft` reads it back with `peft_import`. A round trip
reproduces the tensors bit for bit.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peftkb.errors import UsageError
from peftkb.interop.folder import write_new_folder

SUPPORTED = ("lora", "dora", "loha", "vera", "adalora", "ia3", "prompt-tuning", "prefix-tuning")
LOHA_NAMES = {"B1": "hada_w1_a", "A1": "hada_w1_b", "B2": "hada_w2_a", "A2": "hada_w2_b"}
PREFIX = "base_model.model."
TASK_TYPES = {"causal-lm": "CAUSAL_LM", "seq2seq-lm": "SEQ_2_SEQ_LM", "feature-extraction": "FEATURE_EXTRACTION"}
RUN_MARKER, RUN_ADAPTER = "peftkb-train.json", "adapter.safetensors"
PEFT_CONFIG, PEFT_ADAPTER = "adapter_config.json", "adapter_model.safetensors"


# -- tensor names ---------------------------------------------------------------------------------
def _split(key: str) -> tuple[str, str]:
    module, _, leaf = key.rpartition(".")
    return module, leaf


def to_peft_tensors(method: str, state: dict[str, Any], feedforward: set[str] = frozenset()) -> dict[str, Any]:
    """Reference tensors -> peft's saved tensors. `feedforward`: module names whose IA3 vector scales the input."""
    out: dict[str, Any] = {}
    for key, tensor in state.items():
        module, leaf = _split(key)
        if method in ("lora", "dora") and leaf in ("A", "B"):
            out[f"{PREFIX}{module}.lora_{leaf}.weight"] = tensor
        elif method == "dora" and leaf == "m":
            out[f"{PREFIX}{module}.lora_magnitude_vector"] = tensor
        elif method == "loha" and leaf in LOHA_NAMES:
            out[f"{PREFIX}{module}.{LOHA_NAMES[leaf]}"] = tensor
        elif method == "vera" and leaf in ("d", "b"):
            out[f"{PREFIX}{module}.vera_lambda_{leaf}"] = tensor
        elif method == "adalora" and leaf in ("Q", "P", "Lambda"):
            name = {"Q": "lora_A", "P": "lora_B", "Lambda": "lora_E"}[leaf]
            out[f"{PREFIX}{module}.{name}"] = tensor.reshape(-1, 1) if leaf == "Lambda" else tensor
        elif method == "ia3" and leaf == "l":
            out[f"{PREFIX}{module}.ia3_l"] = tensor.reshape(1, -1) if module in feedforward else tensor.reshape(-1, 1)
        elif method == "prompt-tuning" and key == "prompt":
            out["prompt_embeddings"] = tensor
        elif method == "prefix-tuning" and key == "prefix_encoder.prefix":
            out["prompt_embeddings"] = tensor
        else:
            raise UsageError(f"{method}: the trained tensor '{key}' has no peft counterpart "
                             f"(a classification head or a form peft does not have)")
    return {k: v.contiguous() for k, v in out.items()}


def from_peft_tensors(method: str, state: dict[str, Any]) -> dict[str, Any]:
    """peft's saved tensors -> reference tensors (the inverse of `to_peft_tensors`)."""
    out: dict[str, Any] = {}
    for key, tensor in state.items():
        if key == "prompt_embeddings" and method in ("prompt-tuning", "prefix-tuning"):
            out["prompt" if method == "prompt-tuning" else "prefix_encoder.prefix"] = tensor
            continue
        if not key.startswith(PREFIX):
            raise UsageError(f"{method}: unexpected tensor '{key}' in the peft adapter")
        module, leaf = _split(key[len(PREFIX):])
        if method in ("lora", "dora") and leaf == "weight" and module.endswith((".lora_A", ".lora_B")):
            owner, _, part = module.rpartition(".")
            out[f"{owner}.{part[-1]}"] = tensor
        elif method == "dora" and leaf == "lora_magnitude_vector":
            out[f"{module}.m"] = tensor
        elif method == "vera" and leaf in ("vera_lambda_d", "vera_lambda_b"):
            out[f"{module}.{leaf[-1]}"] = tensor
        elif method == "loha" and leaf in LOHA_NAMES.values():
            out[f"{module}.{ {v: k for k, v in LOHA_NAMES.items()}[leaf] }"] = tensor
        elif method == "adalora" and leaf in ("lora_A", "lora_B", "lora_E"):
            out[f"{module}.{ {'lora_A': 'Q', 'lora_B': 'P', 'lora_E': 'Lambda'}[leaf] }"] = (
                tensor.reshape(-1) if leaf == "lora_E" else tensor)
        elif method == "ia3" and leaf == "ia3_l":
            out[f"{module}.l"] = tensor.reshape(-1)
        else:
            raise UsageError(f"{method}: unexpected tensor '{key}' in the peft adapter")
    return {k: v.contiguous() for k, v in out.items()}


def _modules(state: dict[str, Any]) -> list[str]:
    return sorted({_split(k)[0] for k in state if "." in k})


# -- configs -----------------------------------------------------------------------------------------
def peft_config_of(method: str, config: dict[str, Any], state: dict[str, Any], task: str,
                   feedforward: set[str]) -> dict[str, Any]:
    """The peft config fields for a reference method config (targets: the exact modules that were adapted)."""
    modules = _modules(state)
    task_type = TASK_TYPES.get(task)
    if method == "lora":
        return {"peft_type": "LORA", "task_type": task_type, "r": config["r"], "lora_alpha": config["alpha"],
                "lora_dropout": config.get("dropout", 0.0), "target_modules": modules}
    if method == "dora":
        return {"peft_type": "LORA", "task_type": task_type, "r": config["r"], "lora_alpha": config["alpha"],
                "use_dora": True, "target_modules": modules}
    if method == "loha":
        return {"peft_type": "LOHA", "task_type": task_type, "r": config["r"], "alpha": config["alpha"],
                "rank_dropout": config.get("rank_dropout", 0.0), "module_dropout": config.get("module_dropout", 0.0),
                "target_modules": modules}
    if method == "vera":
        return {"peft_type": "VERA", "task_type": task_type, "r": config["r"], "target_modules": modules,
                "projection_prng_key": config["projection_prng_key"], "save_projection": False,
                "vera_dropout": config.get("dropout", 0.0), "d_initial": config.get("d_initial", 0.1)}
    if method == "adalora":
        return {"peft_type": "ADALORA", "task_type": task_type, "init_r": config["init_r"],
                "target_r": config["target_r"], "lora_alpha": config["alpha"], "lora_dropout": config.get("dropout", 0.0),
                "total_step": config.get("total_steps", 1000), "target_modules": modules,
                "beta1": config.get("beta1", 0.85), "beta2": config.get("beta2", 0.85),
                "orth_reg_weight": config.get("orth_reg_weight", 0.5)}
    if method == "ia3":
        return {"peft_type": "IA3", "task_type": task_type, "target_modules": modules,
                "feedforward_modules": sorted(feedforward)}
    if method == "prompt-tuning":
        return {"peft_type": "PROMPT_TUNING", "task_type": task_type, "num_virtual_tokens": config["n_virtual_tokens"],
                "token_dim": int(state["prompt"].shape[1]), "num_transformer_submodules": 1}
    if method == "prefix-tuning":
        return {"peft_type": "PREFIX_TUNING", "task_type": task_type, "num_virtual_tokens": config["n_virtual_tokens"],
                "prefix_projection": False}
    raise UsageError(f"convert supports {', '.join(SUPPORTED)}, not {method}")


def _feedforward(method: str, config: dict[str, Any], state: dict[str, Any]) -> set[str]:
    """The IA3 modules whose input is rescaled: those whose vector has the input width (role in the config)."""
    if method != "ia3":
        return set()
    from peftkb.interop.peft_import import MODULE_ROLES

    roles = set(config.get("feedforward_modules") or ())
    return {m for m in _modules(state) if MODULE_ROLES.get(m.rsplit(".", 1)[-1]) in roles}


# -- folders -------------------------------------------------------------------------------------------
def run_to_peft(run: Path, out: Path) -> dict[str, Any]:
    """A `peftkb train` output folder -> a peft adapter folder; returns the adapter config written."""
    from safetensors.torch import load_file, save_file

    marker = run / RUN_MARKER
    if not marker.is_file() or not (run / RUN_ADAPTER).is_file():
        raise UsageError(f"{run}: not a peftkb train output (needs {RUN_MARKER} and {RUN_ADAPTER})")
    record = json.loads(marker.read_text(encoding="utf-8"))
    method = record.get("method")
    if method not in SUPPORTED:
        raise UsageError(f"{run}: {method} has no exact peft counterpart to convert to "
                         f"(convert supports {', '.join(SUPPORTED)})")
    state = load_file(str(run / RUN_ADAPTER))
    config = record["method_config"]
    feedforward = _feedforward(method, config, state)
    tensors = to_peft_tensors(method, state, feedforward)
    fields = peft_config_of(method, config, state, record.get("task", "causal-lm"), feedforward)
    fields["base_model_name_or_path"] = record.get("model_folder")

    def write(folder: Path) -> None:
        import peft

        cls = peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING[fields["peft_type"]]
        cls(**{k: v for k, v in fields.items() if k != "peft_type"}).save_pretrained(str(folder))
        save_file(tensors, str(folder / PEFT_ADAPTER))

    write_new_folder(out, write, prefix=".peftkb-convert-")
    return fields


def peft_to_run(adapter: Path, out: Path, model_folder: str | None = None) -> dict[str, Any]:
    """A peft adapter folder -> a peftkb run folder (peftkb-train.json + adapter.safetensors)."""
    from safetensors.torch import load_file, save_file

    from peftkb.interop.peft_import import read_peft_config

    config = read_peft_config(adapter)
    kind = {"LORA": "lora", "LOHA": "loha", "VERA": "vera", "ADALORA": "adalora", "IA3": "ia3", "PROMPT_TUNING": "prompt-tuning",
            "PREFIX_TUNING": "prefix-tuning"}.get(config["peft_type"])
    if kind == "lora" and config.get("use_dora"):
        kind = "dora"
    if kind is None or (kind in ("lora", "dora") and (config.get("use_rslora") or isinstance(config.get("init_lora_weights"), str))):
        raise UsageError(f"{adapter}: this {config['peft_type']} adapter is not converted (supported: "
                         f"{', '.join(SUPPORTED)}; LoRA without rsLoRA scaling or a special initialisation)")
    if not (adapter / PEFT_ADAPTER).is_file():
        raise UsageError(f"{adapter}: no {PEFT_ADAPTER}")
    state = from_peft_tensors(kind, load_file(str(adapter / PEFT_ADAPTER)))
    targets = config.get("target_modules") or []
    method_config: dict[str, Any] = {
        "lora": lambda: {"r": config["r"], "alpha": config["lora_alpha"], "dropout": config.get("lora_dropout", 0.0),
                         "target_modules": sorted(targets)},
        "dora": lambda: {"r": config["r"], "alpha": config["lora_alpha"], "target_modules": sorted(targets)},
        "loha": lambda: {"r": config["r"], "alpha": config["alpha"], "rank_dropout": config.get("rank_dropout", 0.0),
                         "module_dropout": config.get("module_dropout", 0.0), "target_modules": sorted(targets)},
        "vera": lambda: {"r": config["r"], "projection_prng_key": config["projection_prng_key"],
                         "dropout": config.get("vera_dropout", 0.0), "d_initial": config.get("d_initial", 0.1),
                         "save_projection": False, "target_modules": sorted(targets)},
        "adalora": lambda: {"init_r": config["init_r"], "target_r": config["target_r"], "alpha": config["lora_alpha"],
                            "dropout": config.get("lora_dropout", 0.0), "target_modules": sorted(targets),
                            "total_steps": config.get("total_step") or 1000, "beta1": config["beta1"],
                            "beta2": config["beta2"], "orth_reg_weight": config["orth_reg_weight"]},
        "ia3": lambda: {"target_modules": sorted(targets), "feedforward_modules": sorted(
            {r for m in config.get("feedforward_modules") or [] for r in [_role(m)] if r})},
        "prompt-tuning": lambda: {"n_virtual_tokens": config["num_virtual_tokens"]},
        "prefix-tuning": lambda: {"n_virtual_tokens": config["num_virtual_tokens"], "prefix_projection": False},
    }[kind]()
    task = {v: k for k, v in TASK_TYPES.items()}.get(config.get("task_type") or "", "feature-extraction")
    record = {"method": kind, "method_config": method_config, "model_folder": model_folder
              or config.get("base_model_name_or_path"), "task": task, "labels": None,
              "options": {"seed": 0}, "converted_from": str(adapter), "status": "converted"}

    def write(folder: Path) -> None:
        (folder / RUN_MARKER).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        save_file(state, str(folder / RUN_ADAPTER))

    write_new_folder(out, write, prefix=".peftkb-convert-")
    return record


def _role(module: str) -> str | None:
    from peftkb.interop.peft_import import MODULE_ROLES

    return MODULE_ROLES.get(module.rsplit(".", 1)[-1])
