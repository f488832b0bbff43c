"""Exact trainable-parameter counts: a catalog formula evaluated on a concrete model shape.

A method's `trainable_params` has three scopes (see `peftkb.model.TrainableParams`):

    per_target   summed over every selected linear module, with that module's d_in and d_out
    per_layer    once per Transformer block, times n_layers (T5: encoder + decoder blocks)
    total        once

Modules are selected by the method's target roles (q, k, v, o, up, gate, down), or by `targets` given by
the caller: each name is either a role, or a module name matched the way peft matches `target_modules`
(the full name equals it or ends with "." + it, so `q_proj`, `attention.output.dense` and `c_attn` all
work). A fused module (GPT-2 `c_attn`, Falcon `query_key_value`) counts once when any of its roles is
targeted. `all-linear` selects every linear layer but the output layer (`lm_head`), as peft's
`target_modules="all-linear"` does: on a BertModel, which has no output layer, that includes the pooler.
Targets are given once: `-t`/`targets=` or the hyperparameter `target_modules`, never both (refused), and only
to a method whose formula has a per-target scope (refused otherwise: the count would not depend on them).

Hyperparameters take their catalog defaults unless overridden (`r=16`). Every numeric value, given or default,
is checked against the range its catalog entry declares (`peftkb.ranges`), evaluated with this model's symbols
and, for bounds naming d_in/d_out, with each selected module's sizes (d_model when none is selected). A count
that comes out zero, negative or above ABSURD_FACTOR times the model's own size is refused: such a number is
never an answer.

Methods are read by attribute only, so both the pydantic `Method` and the cache's plain `Record` work.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from peftkb.calculators.architecture import ROLES, Architecture, LinearModule
from peftkb.errors import UsageError, did_you_mean
from peftkb.formula import Formula, FormulaError
from peftkb.ranges import NUMERIC_TYPES, Range, RangeError

SCOPES = ("per_target", "per_layer", "total")
#: a count above this multiple of the base model's own size cannot be a parameter-efficient configuration
ABSURD_FACTOR = 10


@dataclass
class BreakdownRow:
    """One line of a breakdown: a module kind (per_target), the per-layer term, or the total term."""

    scope: str
    module: str
    role: str | None
    count: int
    d_in: int | None
    d_out: int | None
    each: int | float
    params: int

    def to_dict(self) -> dict[str, Any]:
        return {"scope": self.scope, "module": self.module, "role": self.role, "count": self.count,
                "d_in": self.d_in, "d_out": self.d_out, "each": self.each, "params": self.params}


@dataclass
class ParamCount:
    method: str
    model: str
    trainable: int
    n_params: int
    exact: bool
    formulas: dict[str, str]
    values: dict[str, Any]
    targets: list[str]
    rows: list[BreakdownRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    trains_base_weights: bool = False

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.n_params if self.n_params else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "model": self.model, "trainable": self.trainable,
                "n_params": self.n_params, "percent": round(self.percent, 6), "exact": self.exact,
                "formulas": self.formulas, "values": self.values, "targets": self.targets,
                "breakdown": [r.to_dict() for r in self.rows], "notes": self.notes}


# -- hyperparameters --------------------------------------------------------------------------------
def _attr(obj: Any, name: str, default: Any = None) -> Any:
    value = getattr(obj, name, default)
    return default if value is None else value


def _convert(raw: str, kind: str, name: str) -> Any:
    text = raw.strip()
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            value = float(text)
            if not math.isfinite(value):
                raise ValueError(text)
            return value
        if kind == "bool":
            lowered = text.lower()
            if lowered in ("true", "yes", "1", "on"):
                return True
            if lowered in ("false", "no", "0", "off"):
                return False
            raise ValueError(text)
        if kind == "list[str]":
            return [t.strip() for t in text.split(",") if t.strip()]
        if kind == "list[int]":
            return [int(t) for t in text.split(",") if t.strip()]
        return text
    except ValueError:
        raise UsageError(f"--set {name}={raw}: '{raw}' is not a valid {kind}") from None


def parse_assignments(method: Any, assignments: Iterable[str], *, strict: bool = True) -> dict[str, Any]:
    """`["r=16", "alpha=32"]` -> typed values for the method's hyperparameters.

    With strict=False, names the method does not have are skipped (for --compare across methods).
    """
    kinds = {h.name: h.type for h in _attr(method, "hyperparameters", [])}
    values: dict[str, Any] = {}
    for item in assignments:
        name, sep, raw = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise UsageError(f"--set expects NAME=VALUE, not '{item}'")
        if name not in kinds:
            if not strict:
                continue
            known = ", ".join(sorted(kinds)) or "none"
            raise UsageError(f"method '{method.id}' has no hyperparameter '{name}'"
                             + did_you_mean(name, kinds) + f"; its hyperparameters: {known}")
        values[name] = _convert(raw, kinds[name], name)
    return values


def hyperparameter_values(method: Any, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    values = {h.name: h.default for h in _attr(method, "hyperparameters", [])}
    values.update(overrides or {})
    return values


# -- module selection -------------------------------------------------------------------------------
ALL_LINEAR = "all-linear"


def _matches(module: LinearModule, key: str) -> bool:
    if key == ALL_LINEAR:
        return module.name != "lm_head"
    if key in ROLES:
        return key in module.roles
    return module.name == key or module.name.endswith("." + key) or module.kind == key


def select_modules(arch: Architecture, targets: Sequence[str], *, strict: bool = True) -> list[LinearModule]:
    """Modules matched by any of `targets` (roles or peft-style names), in model order, each once.

    strict: a name that matches nothing is an error; a role the model lacks (gate on BERT) is not.
    """
    chosen: list[LinearModule] = []
    for key in targets:
        hits = [m for m in arch.modules if _matches(m, key)]
        if not hits and strict and key not in ROLES and key != ALL_LINEAR:
            names = sorted({m.kind for m in arch.modules} | {m.name.rsplit(".", 1)[-1] for m in arch.modules})
            raise UsageError(f"target '{key}' matches no linear module of {arch.name}"
                             + did_you_mean(key, names) + "; modules: " + ", ".join(names)
                             + "; roles: " + ", ".join(ROLES) + "; or all-linear")
        chosen.extend(hits)
    seen: set[str] = set()
    ordered = []
    index = {m.name: i for i, m in enumerate(arch.modules)}
    for m in sorted(chosen, key=lambda m: index[m.name]):
        if m.name not in seen:
            seen.add(m.name)
            ordered.append(m)
    return ordered


def _split_targets(raw: Sequence[str] | str | None) -> list[str]:
    if raw is None:
        return []
    items = raw.split(",") if isinstance(raw, str) else [t for part in raw for t in str(part).split(",")]
    return [t.strip() for t in items if t.strip()]


# -- counting ---------------------------------------------------------------------------------------
#: symbols with one value per targeted module: its sizes, and is_ffn (1 for a feed-forward projection, gate, up or
#: down, else 0), which (IA)^3 needs: peft scales a feed-forward module's input (d_in) and any other's output (d_out)
PER_TARGET_SYMBOLS = ("d_in", "d_out", "is_ffn")
FFN_ROLES = frozenset({"gate", "up", "down"})


def _per_target_env(m: LinearModule) -> dict[str, int]:
    return {"d_in": m.d_in, "d_out": m.d_out, "is_ffn": int(bool(FFN_ROLES & set(m.roles)))}


def _number(value: Any, name: str, method_id: str) -> int | float:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    if value is None:
        raise UsageError(f"method '{method_id}': hyperparameter '{name}' has no default; give --set {name}=VALUE")
    raise UsageError(f"method '{method_id}': hyperparameter '{name}' is {value!r}, not a number")


def _whole(value: int | Fraction) -> tuple[int, bool]:
    if isinstance(value, Fraction):
        if value.denominator == 1:
            return int(value), True
        return int(value + Fraction(1, 2)), False  # round half up; the count is marked approximate
    return int(value), True


def count_trainable(method: Any, arch: Architecture, overrides: Mapping[str, Any] | None = None,
                    targets: Sequence[str] | str | None = None) -> ParamCount:
    """Evaluate `method.trainable_params` on `arch`; raises UsageError when the method has no formula."""
    tp = _attr(method, "trainable_params")
    if tp is None:
        raise UsageError(f"method '{method.id}' has no trainable-parameter formula in the catalog "
                         f"(catalog/{method.id}.yaml has no trainable_params)")
    formulas = {s: getattr(tp, s) for s in SCOPES if getattr(tp, s, None)}
    values = hyperparameter_values(method, overrides)
    from_option = _split_targets(targets)
    from_set = _split_targets((overrides or {}).get("target_modules"))
    if from_option and from_set:
        raise UsageError("targets given twice (--targets and --set target_modules=...): give them once")
    given = from_option or from_set
    if given and "per_target" not in formulas:
        raise UsageError(f"method '{method.id}' has no per-target formula (its count does not depend on target "
                         "modules): --targets / target_modules do not apply")
    target_keys = given or list(_attr(tp, "targets", []))
    notes: list[str] = []
    modules: list[LinearModule] = []
    if "per_target" in formulas or given:
        modules = select_modules(arch, target_keys, strict=bool(given))
        missing = [k for k in target_keys if k in ROLES and not any(k in m.roles for m in arch.modules)]
        if missing:
            notes.append(f"{arch.name} has no module with role(s) {', '.join(missing)}; skipped")
        if "per_target" in formulas and not modules:
            raise UsageError(f"none of the targets {', '.join(target_keys)} matches a linear module of {arch.name}")
        if any(len(m.roles) > 1 for m in modules):
            notes.append("a fused projection (q/k/v or gate/up) counts once, with its full d_out (as peft targets it)")
        if any(m.cross for m in modules):
            notes.append("T5 decoder cross-attention (EncDecAttention) modules are included by role")

    check_values(method, values, arch, modules)
    env: dict[str, Any] = dict(arch.symbols())
    parsed = {scope: Formula.parse(src) for scope, src in formulas.items()}
    for scope, f in parsed.items():
        for sym in f.symbols():
            if sym in env or sym in PER_TARGET_SYMBOLS or sym == "n_targets":
                continue
            if sym not in values:
                raise UsageError(f"method '{method.id}': formula symbol '{sym}' is neither an architecture symbol "
                                 "nor a hyperparameter")
            if sym in f.string_symbols():  # tested by if_eq; check_values has checked it against its choices
                env[sym] = str(values[sym])
                continue
            env[sym] = _number(values[sym], sym, method.id)
    if modules:
        env["n_targets"] = Fraction(len(modules), arch.n_layers)

    def evaluate(f: Formula, extra: Mapping[str, Any] | None = None) -> int | Fraction:
        try:
            return f.evaluate({**env, **(extra or {})})
        except FormulaError as exc:
            raise UsageError(f"method '{method.id}': {exc}") from None

    total: int | Fraction = 0
    rows: list[BreakdownRow] = []
    if "per_target" in parsed:
        groups: dict[str, list[LinearModule]] = {}
        for m in modules:
            groups.setdefault(m.kind, []).append(m)
        for kind, ms in groups.items():
            subtotal: int | Fraction = 0
            shapes = {(m.d_in, m.d_out) for m in ms}
            for m in ms:
                subtotal += evaluate(parsed["per_target"], _per_target_env(m))
            total += subtotal
            d_in, d_out = next(iter(shapes)) if len(shapes) == 1 else (None, None)
            each = evaluate(parsed["per_target"], _per_target_env(ms[0]))
            rows.append(BreakdownRow("per_target", kind, ms[0].role, len(ms), d_in, d_out,
                                     _whole(each)[0], _whole(subtotal)[0]))
    if "per_layer" in parsed:
        each = evaluate(parsed["per_layer"])
        total += each * arch.n_layers
        rows.append(BreakdownRow("per_layer", "(each block)", None, arch.n_layers, None, None,
                                 _whole(each)[0], _whole(each * arch.n_layers)[0]))
    if "total" in parsed:
        once = evaluate(parsed["total"])
        total += once
        rows.append(BreakdownRow("total", "(once)", None, 1, None, None, _whole(once)[0], _whole(once)[0]))
    trainable, whole = _whole(total)
    if not whole:
        notes.append("the formula gives a fractional count here; rounded")
    shown = ", ".join(f"{k}={v}" for k, v in values.items() if k in env and k not in arch.symbols())
    if trainable <= 0:
        raise UsageError(f"method '{method.id}' on {arch.name}: the formula gives {trainable:,} trainable parameters"
                         + (f" with {shown}" if shown else "") + ": not a valid configuration")
    if trainable > ABSURD_FACTOR * arch.n_params:
        raise UsageError(f"method '{method.id}' on {arch.name}: the formula gives {trainable:,} trainable parameters"
                         f", more than {ABSURD_FACTOR}x the model's {arch.n_params:,}"
                         + (f" (with {shown})" if shown else "") + ": not a valid configuration")
    shown_values = {k: v for k, v in values.items() if k in env or k == "target_modules"}
    if given or "per_target" in formulas:
        shown_values["target_modules"] = target_keys
    note = _attr(tp, "note")
    if note:
        notes.append(note)
    return ParamCount(method=method.id, model=arch.name, trainable=trainable, n_params=arch.n_params,
                      exact=bool(_attr(tp, "exact", True)) and whole, formulas=formulas, values=shown_values,
                      targets=sorted({m.kind for m in modules}, key=[m.kind for m in modules].index),
                      rows=rows, notes=notes,
                      trains_base_weights=bool(_attr(_attr(method, "properties"), "trains_base_weights", False)))


def check_values(method: Any, values: Mapping[str, Any], arch: Architecture,
                 modules: Sequence[LinearModule] = ()) -> None:
    """Raise UsageError when a numeric hyperparameter lies outside its declared range on `arch`.

    The one place values are checked, for params, memory, fit and --compare alike. A bound naming d_in or
    d_out is evaluated for every selected module (d_in = d_out = d_model when none is selected).
    """
    env: dict[str, Any] = dict(arch.symbols())
    for name, value in values.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            env.setdefault(name, value)
    shapes = [(m.d_in, m.d_out, m.name) for m in modules] or [(arch.d_model, arch.d_model, "d_model")]
    for h in _attr(method, "hyperparameters", []):
        value = values.get(h.name)
        choices = _attr(h, "choices", None)
        if value is not None and choices and value not in choices:
            raise UsageError(f"method '{method.id}': {h.name}={value!r} is not one of its choices: "
                             + ", ".join(choices))
        if value is None or h.type not in NUMERIC_TYPES:
            continue
        items = value if isinstance(value, list) else [value]
        if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in items):
            raise UsageError(f"method '{method.id}': {h.name}={value!r} is not a number")
        if any(isinstance(x, float) and not math.isfinite(x) for x in items):
            raise UsageError(f"method '{method.id}': {h.name}={value!r} is not a finite number")
        text = _attr(h, "range")
        if not text:
            continue
        try:
            rng = Range.parse(text)
        except RangeError as exc:
            raise UsageError(f"catalog/{method.id}.yaml: hyperparameter '{h.name}': {exc}") from None
        per_module = bool(rng.symbols() & {"d_in", "d_out"})
        for d_in, d_out, where in (shapes if per_module else shapes[:1]):
            try:
                why = next((w for x in items if (w := rng.violation(x, {**env, "d_in": d_in, "d_out": d_out}))),
                           None)
            except FormulaError as exc:
                raise UsageError(f"catalog/{method.id}.yaml: range of '{h.name}' cannot be evaluated on "
                                 f"{arch.name}: {exc}") from None
            if why:
                at = f" for {where} (d_in={d_in}, d_out={d_out})" if per_module else ""
                raise UsageError(f"method '{method.id}': {h.name}={value}: {why}{at}; its range is {text} "
                                 f"on {arch.name}")


def has_formula(method: Any) -> bool:
    return _attr(method, "trainable_params") is not None

