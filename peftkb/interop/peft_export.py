"""A catalog entry as a Hugging Face `peft` setup: the config (adapter_config.json) and a runnable script.

The catalog's hyperparameter names are mapped to the fields of the peft config class the entry names
(`implementations.peft.config`): a name that is a field is kept, otherwise the renames below are tried
(alpha -> lora_alpha, ...); a catalog hyperparameter with no peft field is reported, never silently
dropped. Target roles (q, v, up, ...) are resolved to the module names of the model's family with the
calculators' module inventory, so the exported config adapts exactly the modules `peftkb params`
counts. The entry's `implementations.peft.option` (use_dora=True, init_lora_weights='pissa', ...) is
applied. Methods that need more than a config get it in the script: QLoRA's 4-bit quantization and
k-bit preparation, AdaLoRA's `total_step` and `update_and_allocate`, the LoRA+ and LoRA-FA optimizers.

peft is imported only inside `build_config`, to instantiate (and so validate) the config class.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any

from peftkb.calculators.architecture import Architecture
from peftkb.calculators.architecture import ROLES
from peftkb.calculators.params import hyperparameter_values, select_modules
from peftkb.errors import UsageError
from peftkb.interop.peft_import import METHOD_FIELDS

#: catalog hyperparameter name -> peft config field names tried after the name itself
RENAME = {"alpha": ("lora_alpha", "alpha"), "dropout": ("lora_dropout", "dropout", "module_dropout"),
          "group_size": ("qalora_group_size",),
          "n_virtual_tokens": ("num_virtual_tokens",), "n_frozen_tokens": ("num_frozen_tokens",),
          "stride_a": ("stride_A",), "num_b": ("num_B",), "shadow_layers": ("shadow_num_hidden_layers",),
          "block_size": ("oft_block_size", "boft_block_size"), "projection_hidden": ("encoder_hidden_size",)}
MULTI_TASK_TYPES = {"MULTITASK_PROMPT_TUNING", "POLY"}  # their forward takes each example's task id
TASK_TYPES = {"t5": "SEQ_2_SEQ_LM", "bert": "SEQ_CLS", "roberta": "SEQ_CLS"}  # others: CAUSAL_LM
AUTO_CLASSES = {"SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM", "SEQ_CLS": "AutoModelForSequenceClassification",
                "CAUSAL_LM": "AutoModelForCausalLM"}


@dataclass
class PeftSetup:
    """Everything needed to reproduce a catalog method in peft."""

    method: str
    config_class: str
    peft_type: str
    kwargs: dict[str, Any]
    task_type: str
    model: str
    unmapped: list[str] = field(default_factory=list)   # catalog hyperparameters peft's config has no field for
    quantize_4bit: bool = False                          # QLoRA: load the base in 4-bit NF4
    adalora: bool = False                                # needs total_step and update_and_allocate
    optimizer: str | None = None                         # peft.optimizers factory (LoRA+, LoRA-FA)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _peft():
    try:
        import peft
    except ImportError:
        raise UsageError("export --to peft needs peft: pip install peft") from None
    return peft


def target_modules(arch: Architecture, roles: list[str]) -> list[str] | str:
    """peft's `target_modules` selecting exactly the modules these roles (or names) select in `arch`.

    The shortest dotted suffix without a layer index that names the chosen modules and no other linear
    module (q_proj, SelfAttention.q); where none exists (BERT's FFN `output.dense` is also the tail of
    `attention.output.dense`) a regular expression over the full names, with layer indices as \\d+.
    """
    chosen = select_modules(arch, roles, strict=True)
    if not chosen:
        raise UsageError(f"none of the targets {', '.join(roles)} matches a linear module of {arch.name}")
    names = {m.name for m in chosen}
    others = [m.name for m in arch.modules if m.name not in names]
    suffixes: list[str] = []
    for module in chosen:
        parts = module.name.split(".")
        suffix = None
        for k in range(1, len(parts) + 1):
            tail = parts[-k:]
            if any(p.isdigit() for p in tail):
                break
            candidate = ".".join(tail)
            if not any(o == candidate or o.endswith("." + candidate) for o in others):
                suffix = candidate
                break
        if suffix is None:
            generic = sorted({r"\.".join(r"\d+" if p.isdigit() else re.escape(p) for p in m.name.split("."))
                              for m in chosen})
            return r"(?:.*\.)?(?:" + "|".join(generic) + ")"
        if suffix not in suffixes:
            suffixes.append(suffix)
    return suffixes


def _option_settings(option: str | None) -> dict[str, Any]:
    out = {}
    for key, raw in re.findall(r"(\w+)\s*=\s*('[^']*'|True|False|\d+)", option or ""):
        out[key] = ast.literal_eval(raw)
    return out


def peft_setup(method: Any, arch: Architecture, overrides: dict[str, Any] | None = None,
               targets: list[str] | None = None) -> PeftSetup:
    """Map a catalog method with the given settings onto its peft config class."""
    impl = method.implementations.peft
    if impl is None:
        raise UsageError(f"'{method.id}' has no peft implementation in the catalog "
                         f"(see `peftkb coverage --against peft`); try --to adapters")
    if not impl.config:
        raise UsageError(f"catalog/{method.id}.yaml names no peft config class for {impl.peft_type}")
    peft = _peft()
    cls = getattr(peft, impl.config, None)
    if cls is None:
        raise UsageError(f"the installed peft {peft.__version__} has no {impl.config}")
    fields = {f.name for f in dataclasses.fields(cls)}
    values = hyperparameter_values(method, overrides)
    task = TASK_TYPES.get(arch.family, "CAUSAL_LM")
    setup = PeftSetup(method=method.id, config_class=impl.config, peft_type=impl.peft_type, kwargs={},
                      task_type=task, model=arch.name)
    roles = targets or values.pop("target_modules", None) or list(getattr(method.trainable_params, "targets", []) or [])
    values.pop("target_modules", None)
    roles = [roles] if isinstance(roles, str) else list(roles)
    for name, value in values.items():
        if value is None:
            continue
        if (method.id, name) in METHOD_FIELDS:  # a name (and values) of the method's own: MiSS's init_weights
            peft_name, peft_values = METHOD_FIELDS[(method.id, name)]
            setup.kwargs[peft_name] = next((k for k, v in peft_values.items() if v == value), value)
            continue
        peft_name = next((f for f in (name, *RENAME.get(name, ())) if f in fields), None)
        if peft_name is None:
            setup.unmapped.append(name)
            continue
        setup.kwargs[peft_name] = value
    if "target_modules" in fields and roles:
        linear = all(r in ROLES or r == "all-linear" for r in roles)
        # roles become the family's linear-module names; other names (self_attn, input_layernorm) pass as given
        setup.kwargs["target_modules"] = target_modules(arch, roles) if linear else (roles[0] if len(roles) == 1 else roles)
    if "task_type" in fields:
        setup.kwargs["task_type"] = task
    for key, value in _option_settings(impl.option).items():
        if key in fields:
            setup.kwargs[key] = value
    if impl.peft_type == "IA3" and "target_modules" in setup.kwargs:
        ffn = [r for r in roles if r in ("up", "gate", "down")]
        if ffn:
            setup.kwargs["feedforward_modules"] = target_modules(arch, ffn)
    if impl.peft_type == "ADALORA":
        setup.adalora = True
        setup.kwargs.setdefault("total_step", 1000)
        setup.notes.append("AdaLoRA's schedule needs total_step (the number of training steps): set it to yours")
    if setup.kwargs.get("init_lora_weights") == "loftq":  # LoftQ's quantisation settings go in their own config
        setup.kwargs["loftq_config"] = {"loftq_bits": int(values.get("bits") or 4),
                                        "loftq_iter": int(values.get("n_iter") or 1)}
        setup.unmapped = [n for n in setup.unmapped if n not in ("bits", "n_iter")]
    if impl.peft_type == "TRAINABLE_TOKENS" and "token_indices" in fields:
        n = int(values.get("n_tokens") or 0)
        setup.kwargs["token_indices"] = list(range(n))
        setup.notes.append(f"token_indices holds {n} placeholder ids (0..{n - 1}): put the ids of the tokens you train")
    if impl.peft_type == "MULTITASK_PROMPT_TUNING":
        setup.kwargs.setdefault("prompt_tuning_init", "RANDOM")
    if method.properties.needs_quantized_base and impl.peft_type == "LORA" and method.id == "qlora":
        setup.quantize_4bit = True
    if "create_loraplus_optimizer" in (impl.option or ""):
        setup.optimizer = "create_loraplus_optimizer"
    if "create_lorafa_optimizer" in (impl.option or ""):
        setup.optimizer = "create_lorafa_optimizer"
    if setup.unmapped:
        setup.notes.append("catalog hyperparameters with no field in " + impl.config + ": "
                           + ", ".join(setup.unmapped) + " (peft's own defaults apply)")
    return setup


def build_config(setup: PeftSetup):
    """Instantiate the peft config (validating every field); UsageError with peft's reason otherwise."""
    peft = _peft()
    cls = getattr(peft, setup.config_class)
    try:
        return cls(**setup.kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"peft's {setup.config_class} refuses these settings: {exc}") from None


def config_json(setup: PeftSetup) -> dict[str, Any]:
    """What peft itself writes as adapter_config.json for this setup (peft's own serialisation)."""
    import tempfile

    config = build_config(setup)
    with tempfile.TemporaryDirectory(prefix="peftkb-export-") as folder:
        config.save_pretrained(folder)
        with open(f"{folder}/adapter_config.json", encoding="utf-8") as handle:
            return json.load(handle)


def python_script(setup: PeftSetup, model_path: str = "PATH/TO/MODEL") -> str:
    """A complete script: load the model, apply the config, train one step (with the method's extra calls)."""
    auto = AUTO_CLASSES[setup.task_type]
    kwargs = ",\n    ".join(f"{k}={v!r}" for k, v in setup.kwargs.items())
    lines = [
        f'"""{setup.method} with Hugging Face peft on {setup.model}: exported by `peftkb export {setup.method} '
        '--to peft --format python`."""',
        "import torch",
        f"from transformers import AutoTokenizer, {auto}",
        f"from peft import {setup.config_class}, get_peft_model" + (", prepare_model_for_kbit_training"
                                                                     if setup.quantize_4bit else ""),
    ]
    if setup.quantize_4bit:
        lines.append("from transformers import BitsAndBytesConfig")
    if setup.optimizer:
        lines.append(f"from peft.optimizers import {setup.optimizer}")
    lines += ["", f"MODEL = {model_path!r}  # a local Hugging Face folder: config, weights, tokenizer", ""]
    if setup.quantize_4bit:
        lines += ["# QLoRA: the frozen base in 4-bit NormalFloat with double quantisation, computed in bf16",
                  "quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4',",
                  "                                  bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)",
                  f"model = {auto}.from_pretrained(MODEL, quantization_config=quantization)",
                  "model = prepare_model_for_kbit_training(model)"]
    else:
        lines.append(f"model = {auto}.from_pretrained(MODEL)")
    lines += [f"config = {setup.config_class}(\n    {kwargs},\n)", "model = get_peft_model(model, config)",
              "model.print_trainable_parameters()", ""]
    if setup.optimizer == "create_loraplus_optimizer":
        lines.append("optimizer = create_loraplus_optimizer(model, optimizer_cls=torch.optim.AdamW, lr=2e-4, "
                     "loraplus_lr_ratio=16)")
    elif setup.optimizer == "create_lorafa_optimizer":
        lines.append(f"optimizer = create_lorafa_optimizer(model, r={setup.kwargs.get('r', 8)}, "
                     f"lora_alpha={setup.kwargs.get('lora_alpha', 16)}, lr=2e-4)")
    else:
        lines.append("optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)")
    lines += ["tokenizer = AutoTokenizer.from_pretrained(MODEL)",
              "batch = tokenizer(['Parameter-efficient fine-tuning trains few weights.'], return_tensors='pt')"]
    if setup.peft_type in MULTI_TASK_TYPES:
        lines.append("batch['task_ids'] = torch.zeros(1, dtype=torch.long)  # the task of each example")
    if setup.task_type == "SEQ_CLS":
        lines.append("batch['labels'] = torch.tensor([0])")
    else:
        lines.append("batch['labels'] = batch['input_ids'].clone()")
    lines += ["", "model.train()", "for step in range(1):  # your training loop",
              "    loss = model(**batch).loss", "    loss.backward()", "    optimizer.step()"]
    if setup.adalora:
        lines.append("    model.base_model.update_and_allocate(step)  # AdaLoRA: reallocate the rank budget")
    lines += ["    optimizer.zero_grad()", "    print(f'step {step}: loss {loss.item():.4f}')", "",
              "model.save_pretrained('adapter')  # adapter_config.json + adapter_model.safetensors", ""]
    return "\n".join(lines)
