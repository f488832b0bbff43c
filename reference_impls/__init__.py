"""Reference implementations of PEFT methods: one readable file per method, checked against the catalog.

`METHODS` maps a catalog id to (ConfigClass, apply); `IDS` lists the ids. Importing this package is cheap:
the method files (and torch) load the first time `METHODS` is read. Usage:

    from reference_impls import METHODS
    Config, apply = METHODS["lora"]
    model = apply(model, Config(r=4))

A method that needs work during training beyond `loss.backward(); optimizer.step()` (AdaLoRA's
regulariser and rank allocation) exposes `training_hooks(model, config)`; `hooks(method_id, ...)`
returns them, or no hooks, for any method.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Callable

#: catalog id -> (module name, config class name)
_FILES = {
    "full-fine-tuning": ("full_fine_tuning", "FullFineTuningConfig"),
    "sequential-adapter": ("sequential_adapter", "SequentialAdapterConfig"),
    "prompt-tuning": ("prompt_tuning", "PromptTuningConfig"),
    "prefix-tuning": ("prefix_tuning", "PrefixTuningConfig"),
    "ia3": ("ia3", "IA3Config"),
    "bitfit": ("bitfit", "BitFitConfig"),
    "child-tuning": ("child_tuning", "ChildTuningConfig"),
    "lora": ("lora", "LoRAConfig"),
    "adalora": ("adalora", "AdaLoRAConfig"),
    "qlora": ("qlora", "QLoRAConfig"),
    "mam-adapter": ("mam_adapter", "MAMAdapterConfig"),
    "propetl": ("propetl", "ProPETLConfig"),
}


def module(method_id: str) -> ModuleType:
    return importlib.import_module(f"reference_impls.{_FILES[method_id][0]}")


def _entry(method_id: str) -> tuple[type, Callable[..., Any]]:
    mod = module(method_id)
    return getattr(mod, _FILES[method_id][1]), mod.apply


IDS: tuple[str, ...] = tuple(_FILES)


def __getattr__(name: str) -> Any:
    if name == "METHODS":  # built on first use, then cached as a plain module attribute
        methods: dict[str, tuple[type, Callable[..., Any]]] = {mid: _entry(mid) for mid in _FILES}
        globals()["METHODS"] = methods
        return methods
    raise AttributeError(f"module 'reference_impls' has no attribute '{name}'")


def hooks(method_id: str, model: Any, config: Any) -> dict[str, Callable[..., Any]]:
    """Keyword arguments for `_core.train`: `extra_loss` and `after_step`, where the method has them."""
    make = getattr(module(method_id), "training_hooks", None)
    return make(model, config) if make else {}
