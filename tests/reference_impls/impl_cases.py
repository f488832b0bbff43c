"""The method x architecture table behind test_common.py, and helpers shared by the method tests.

Every method gets a config with small hyperparameters (the tiny models are 32 wide) and the promises it
makes; test_common.py turns each promise into a test for every architecture the method supports.

The table is split by method family: wave 1's cases are below, each `cases_<family>.py` beside this file
adds its own `CASES` (merged at the bottom of this module). A `cases_*.py` file imports only `Case`,
`make_config` and the arch tuples from here; test files import everything from here, never from a
`cases_*.py` file directly.
"""
from __future__ import annotations

import copy
from fractions import Fraction
import dataclasses
import importlib
from pathlib import Path
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable

import torch
from torch import nn

from peftkb.formula import Formula
from peftkb.loader import find_root, load_catalog_paths
from reference_impls import METHODS, hooks, qlora
from reference_impls._core import (TINY_MODELS, arch_symbols, n_bias, n_params, synthetic_batch, target_dims, find_targets, linear_dims,
                                   tiny_model, train)

ALL_ARCHS = TINY_MODELS  # tiny-bert, tiny-t5, tiny-llama, tiny-gpt2


@dataclass(frozen=True)
class Case:
    config: Callable[[], Any]               # small hyperparameters for the tiny models
    archs: tuple[str, ...] = ALL_ARCHS      # architectures the method supports
    starts_equal: bool = False              # output at init equals the base model's
    mergeable: bool = False                 # has merge()/unmerge() that fold the update into W
    trains_base: str = "none"               # base parameters it trains: none | bias | all
    learns_on: tuple[str, ...] | None = None  # archs where it has something to train (default: archs)
    init_reference: Callable[[nn.Module, Any], nn.Module] | None = None  # what "base" means at init
    before_count: Callable[[nn.Module], Any] | None = None  # brings the model to the state the catalog counts
    lr: float = 1e-2                        # Adam learning rate for the loss test
    extra: dict[str, Any] = field(default_factory=dict)


def make_config(method_id: str, **kw: Any) -> Callable[[], Any]:
    return lambda: METHODS[method_id][0](**kw)


NO_T5 = ("tiny-bert", "tiny-llama", "tiny-gpt2")  # for methods that do not apply to encoder-decoder models

CASES: dict[str, Case] = {
    "full-fine-tuning": Case(make_config("full-fine-tuning"), starts_equal=True, trains_base="all"),
    "sequential-adapter": Case(make_config("sequential-adapter", bottleneck=8), starts_equal=True),
    "prompt-tuning": Case(make_config("prompt-tuning", n_virtual_tokens=8), lr=0.3),  # the paper's learning rate
    "prefix-tuning": Case(make_config("prefix-tuning", n_virtual_tokens=4, projection_hidden=16)),
    "ia3": Case(make_config("ia3"), starts_equal=True, mergeable=True),
    "bitfit": Case(make_config("bitfit"), starts_equal=True, trains_base="bias",
                   learns_on=("tiny-bert", "tiny-gpt2")),  # Llama and T5 have no biases
    "child-tuning": Case(make_config("child-tuning", reserve_p=0.3), starts_equal=True, trains_base="all"),
    "lora": Case(make_config("lora", r=4, alpha=8), starts_equal=True, mergeable=True),
    "adalora": Case(make_config("adalora", init_r=6, target_r=4, total_steps=30, t_init=3, t_final=10, delta_t=2),
                    starts_equal=True, mergeable=True),
    "qlora": Case(make_config("qlora", r=4, alpha=8), starts_equal=True, init_reference=qlora.dequantized_copy),
    "mam-adapter": Case(make_config("mam-adapter", n_virtual_tokens=4, bottleneck=8)),
    "propetl": Case(make_config("propetl", bottleneck=8), starts_equal=True),
}


# -- models and data -----------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _pristine(arch: str) -> nn.Module:
    return tiny_model(arch, seed=0)


def fresh(arch: str) -> nn.Module:
    """A new copy of the seeded tiny model (building from config once per session, copying after)."""
    return copy.deepcopy(_pristine(arch))


def batch_for(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    return synthetic_batch(model, batch_size=4, seq_len=12, seed=seed)


def prepare(method_id: str, arch: str, seed: int = 0, config: Any = None) -> tuple[nn.Module, nn.Module, Any]:
    """(base, adapted, config): a pristine base and a separate copy with the method applied."""
    config = config if config is not None else CASES[method_id].config()
    base = fresh(arch)
    torch.manual_seed(seed)
    adapted = METHODS[method_id][1](fresh(arch), config)
    return base, adapted, config


def run_training(method_id: str, model: nn.Module, config: Any, steps: int, lr: float = 1e-2,
                 seed: int = 0) -> list[float]:
    torch.manual_seed(seed)
    return train(model, batch_for(model), steps, lr, **hooks(method_id, model, config))


@torch.no_grad()
def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    return model(**batch).logits


@torch.no_grad()
def copy_lora_into_peft(ours: nn.Module, theirs: nn.Module, names: list[str]) -> None:
    """Copy our A and B of every named module into peft's lora_A / lora_B of the same module."""
    inner = theirs.base_model.model
    for name in names:
        mine, peft_layer = ours.get_submodule(name), inner.get_submodule(name)
        peft_layer.lora_A["default"].weight.copy_(mine.A)
        peft_layer.lora_B["default"].weight.copy_(mine.B)


@torch.no_grad()
def perturb(model: nn.Module, seed: int = 1, std: float = 0.1) -> None:
    """Move every trainable parameter off its init, so that a zero-init update is no longer zero."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.requires_grad:
            p.add_(std * torch.randn(p.shape, generator=g).to(p))


# -- the catalog formula, evaluated on a model ---------------------------------------------------
@lru_cache(maxsize=None)
def catalog_method(method_id: str):
    """The method's catalog entry, validated in the context of the whole catalog; problems in *other*
    files (which other work may be editing) do not fail these tests, problems in this one do."""
    root = find_root()
    catalog = load_catalog_paths(root, [root / "catalog" / f"{method_id}.yaml"])
    return next(m for m in catalog.methods if m.id == method_id)


def hyperparameters(config: Any) -> dict[str, int | float | str]:
    """The numeric and string fields of a config dataclass (the symbols a formula may use; a string only
    where the formula tests it with if_eq)."""
    return {k: int(v) if isinstance(v, bool) else v for k, v in dataclasses.asdict(config).items()
            if isinstance(v, (int, float, str))}


FFN_ROLES = frozenset({"gate", "up", "down"})


def _target_shapes(base: nn.Module, targets) -> list[tuple[int, int, int]]:
    """(d_in, d_out, is_ffn) of every targeted module: the per-target symbols of the formula language."""
    return [(*linear_dims(t.module), int(bool(FFN_ROLES & set(t.roles)))) for t in find_targets(base, targets)]


def formula_count(method_id: str, base: nn.Module, config: Any, scopes: dict[str, str] | None = None) -> int:
    """The catalog's trainable_params evaluated on `base` with `config`'s hyperparameters.

    per_target is summed over the modules `config.target_modules` resolves to, per_layer is multiplied
    by n_layers, total is counted once. `scopes` overrides the catalog's formulas (for training-time
    counts the catalog states only in a note).
    """
    tp = catalog_method(method_id).trainable_params
    scopes = scopes if scopes is not None else tp.formulas()
    env = {**arch_symbols(base.config), **hyperparameters(config),
           "n_params": n_params(base), "n_bias": n_bias(base)}
    if any("n_targets" in text for text in scopes.values()):
        # targeted modules per block, so that n_targets * n_layers counts them all
        env.setdefault("n_targets", Fraction(len(list(target_dims(base, config.target_modules))), env["n_layers"]))
    count = 0
    if "per_target" in scopes:
        f = Formula.parse(scopes["per_target"])
        count += sum(f.evaluate({**env, "d_in": d_in, "d_out": d_out, "is_ffn": is_ffn})
                     for d_in, d_out, is_ffn in _target_shapes(base, config.target_modules))
    if "per_layer" in scopes:
        count += env["n_layers"] * Formula.parse(scopes["per_layer"]).evaluate(env)
    if "total" in scopes:
        count += Formula.parse(scopes["total"]).evaluate(env)
    return count


# -- the other families' cases ------------------------------------------------------------------
for _path in sorted(Path(__file__).parent.glob("cases_*.py")):
    _family_cases = importlib.import_module(_path.stem).CASES
    assert not set(_family_cases) & set(CASES), f"{_path.name} repeats cases: {set(_family_cases) & set(CASES)}"
    CASES.update(_family_cases)
