"""Allowed values of a hyperparameter: the grammar of `Hyperparameter.range`, parsed and never `eval`ed.

    [lo, hi]   lo <= x <= hi          (lo, hi)   lo < x < hi
    [lo, hi)   lo <= x < hi           (lo, hi]   lo < x <= hi
    lo..hi     same as [lo, hi]            an infinite end is always open: 1..inf = [1, inf) = [1, inf]
    >= x   > x   <= x   < x           one-sided

A bound is `inf` (`-inf`, `+inf`) or a formula of `peftkb.formula` (numbers, + - * / //, parentheses,
min, max) over the architecture symbols (`ARCH_SYMBOLS`: d_model, n_layers, d_in, d_out, ...) and the
method's hyperparameter names. Commas and `..` inside parentheses belong to the formula:
`1..min(d_in, d_out)` is the interval [1, min(d_in, d_out)].

    >>> r = Range.parse("1..min(d_in, d_out)")
    >>> r.violation(0, {"d_in": 64, "d_out": 32})
    '0 is below the minimum 1'
    >>> Range.parse("[0, 1)").violation(1.0, {}) is not None
    True

`range_problems(hyperparameters)` is the loader's check: every range parses, names only known symbols,
fits the type, and holds the default whenever its bounds are constants.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from peftkb.formula import ARCH_SYMBOLS, Formula, FormulaError

NUMERIC_TYPES = ("int", "float", "list[int]")
_INF = {"inf": math.inf, "+inf": math.inf, "-inf": -math.inf}
MAX_RANGE_CHARS = 300


class RangeError(ValueError):
    """A range that does not follow the grammar."""


@dataclass(frozen=True)
class Bound:
    """One end of a range: an infinity or a formula."""

    formula: Formula | None
    infinite: float = 0.0  # +inf / -inf when formula is None

    @classmethod
    def parse(cls, text: str, where: str) -> "Bound":
        text = text.strip()
        if not text:
            raise RangeError(f"{where}: a bound is empty")
        if text.lower() in _INF:
            return cls(None, _INF[text.lower()])
        try:
            return cls(Formula.parse(text))
        except FormulaError as exc:
            raise RangeError(f"{where}: bound {text!r}: {exc}") from None

    def symbols(self) -> set[str]:
        return self.formula.symbols() if self.formula else set()

    def value(self, env: Mapping[str, Any]) -> int | float | Fraction:
        if self.formula is None:
            return self.infinite
        return self.formula.evaluate(env)

    def __str__(self) -> str:
        return self.formula.source if self.formula else ("inf" if self.infinite > 0 else "-inf")


@dataclass(frozen=True)
class Range:
    source: str
    lo: Bound
    hi: Bound
    lo_closed: bool
    hi_closed: bool

    @classmethod
    def parse(cls, source: str) -> "Range":
        if not isinstance(source, str) or not source.strip():
            raise RangeError("a range must be a non-empty string")
        if len(source) > MAX_RANGE_CHARS:
            raise RangeError(f"range longer than {MAX_RANGE_CHARS} characters")
        text = source.strip()
        neg, pos = Bound(None, -math.inf), Bound(None, math.inf)
        for op in (">=", "<=", ">", "<"):  # two-character operators first
            if text.startswith(op):
                bound = Bound.parse(text[len(op):], f"range {source!r}")
                if bound.formula is None:
                    raise RangeError(f"range {source!r}: a one-sided bound must be finite")
                if op[0] == ">":
                    return cls(source, bound, pos, op == ">=", False)
                return cls(source, neg, bound, False, op == "<=")
        if text[0] in "[(" and text[-1] in "])":
            parts = _split_top(text[1:-1], ",")
            if len(parts) != 2:
                raise RangeError(f"range {source!r}: an interval has two bounds, '[lo, hi]'")
            lo, hi = (Bound.parse(p, f"range {source!r}") for p in parts)
            return cls._checked(source, lo, hi, text[0] == "[", text[-1] == "]")
        parts = _split_top(text, "..")
        if len(parts) == 2:
            lo, hi = (Bound.parse(p, f"range {source!r}") for p in parts)
            return cls._checked(source, lo, hi, True, True)
        raise RangeError(f"range {source!r} does not follow the grammar: '[lo, hi]', '(lo, hi)', '[lo, hi)', "
                         "'(lo, hi]', 'lo..hi', '>= x', '> x', '<= x' or '< x'")

    @classmethod
    def _checked(cls, source: str, lo: Bound, hi: Bound, lo_closed: bool, hi_closed: bool) -> "Range":
        if lo.formula is None and lo.infinite > 0 or hi.formula is None and hi.infinite < 0:
            raise RangeError(f"range {source!r}: the lower bound cannot be +inf nor the upper -inf")
        lo_closed = lo_closed and lo.formula is not None  # '1..inf' and '[1, inf]' mean [1, inf)
        hi_closed = hi_closed and hi.formula is not None
        if lo.formula is not None and hi.formula is not None and not (lo.symbols() or hi.symbols()):
            a, b = lo.value({}), hi.value({})
            if a > b or (a == b and not (lo_closed and hi_closed)):
                raise RangeError(f"range {source!r} is empty")
        return cls(source, lo, hi, lo_closed, hi_closed)

    # -- queries ----------------------------------------------------------------------------------
    def symbols(self) -> set[str]:
        return self.lo.symbols() | self.hi.symbols()

    def violation(self, value: int | float, env: Mapping[str, Any]) -> str | None:
        """Why `value` is outside the range evaluated in `env`, or None when it is inside.

        NaN is never inside; a bound that cannot be evaluated (division by zero) raises FormulaError.
        """
        if isinstance(value, float) and math.isnan(value):
            return "nan is not a number"
        shown = value
        if isinstance(value, float) and math.isfinite(value):
            value = Fraction(repr(value))  # the decimal the user wrote: 0.08 is 2/25, not the binary float above it
        lo, hi = self.lo.value(env), self.hi.value(env)
        if value < lo or (value == lo and not self.lo_closed):
            word = "minimum" if self.lo_closed else "exclusive lower bound"
            return f"{_show(shown)} is below the {word} {_show(lo)}" if value < lo else \
                f"{_show(shown)} must be greater than {_show(lo)}"
        if value > hi or (value == hi and not self.hi_closed):
            word = "maximum" if self.hi_closed else "exclusive upper bound"
            return f"{_show(shown)} is above the {word} {_show(hi)}" if value > hi else \
                f"{_show(shown)} must be less than {_show(hi)}"
        return None

    def __str__(self) -> str:
        return self.source


def _show(x: Any) -> str:
    if isinstance(x, Fraction):
        return str(int(x)) if x.denominator == 1 else f"{float(x):g}"
    if isinstance(x, float):
        return "inf" if x == math.inf else "-inf" if x == -math.inf else f"{x:g}"
    return str(x)


def _split_top(text: str, sep: str) -> list[str]:
    """Split at `sep` outside parentheses: '1, min(a, b)' -> ['1', 'min(a, b)']."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        ch = text[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise RangeError(f"unbalanced parentheses in {text!r}")
        elif depth == 0 and text.startswith(sep, i):
            parts.append(text[start:i])
            i += len(sep)
            start = i
            continue
        i += 1
    if depth:
        raise RangeError(f"unbalanced parentheses in {text!r}")
    parts.append(text[start:])
    return parts


# -- the loader's check -------------------------------------------------------------------------------
def range_problems(hyperparameters: Iterable[Any]) -> list[tuple[str, str]]:
    """(hyperparameter name, message) for every range that does not parse or cannot be right.

    Checks: the grammar; the bounds name only architecture symbols or the method's hyperparameter names;
    a range is declared only on int, float or list[int]; a default lies inside a range whose bounds are
    constants. Reads attributes only (pydantic models or plain records).
    """
    hps = list(hyperparameters)
    names = {h.name for h in hps}
    allowed = set(ARCH_SYMBOLS) | names
    problems: list[tuple[str, str]] = []
    for h in hps:
        text = getattr(h, "range", None)
        if text is None:
            continue
        try:
            r = Range.parse(text)
        except RangeError as exc:
            problems.append((h.name, str(exc)))
            continue
        if h.type not in NUMERIC_TYPES:
            problems.append((h.name, f"a range applies to int, float or list[int], not {h.type}"))
            continue
        unknown = sorted(r.symbols() - allowed)
        if unknown:
            problems.append((h.name, f"range {text!r} names unknown symbol(s) {', '.join(unknown)}; allowed: "
                                     "architecture symbols and this method's hyperparameters"))
            continue
        if h.name in r.symbols():
            problems.append((h.name, f"range {text!r} refers to the hyperparameter itself"))
            continue
        default = h.default
        if r.symbols() or default is None:
            continue
        for x in default if isinstance(default, list) else [default]:
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                continue
            why = r.violation(x, {})
            if why:
                problems.append((h.name, f"default {x!r} is outside its range {text!r}: {why}"))
    return problems


def range_problems_at(hyperparameters: Iterable[Any]) -> list[tuple[tuple[str, int, str], str]]:
    """`range_problems` with the field path of each: (("hyperparameters", i, "range"), message).

    The loader's one call: `for path, message in range_problems_at(m.hyperparameters): add(path, message)`.
    """
    hps = list(hyperparameters)
    index = {h.name: i for i, h in enumerate(hps)}
    return [(("hyperparameters", index[name], "range"), message) for name, message in range_problems(hps)]
