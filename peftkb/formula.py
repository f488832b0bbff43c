"""Trainable-parameter formulas: a tiny arithmetic language, parsed and never `eval`ed.

A formula is an expression over numbers, `+ - * / //`, parentheses, the functions below and symbols.
Symbols are architecture symbols (`ARCH_SYMBOLS`) or the method's hyperparameter names.
`/` is exact (fractions), so `r * d_model / 2` stays exact; a count must come out whole.

Functions (`FUNCTIONS`; nothing else can be called):

- `min(a, b, ...)`, `max(a, b, ...)`: two or more arguments.
- `if_lt(a, b, x, y)`: `x` when `a < b`, else `y` (only the chosen branch is evaluated). A size rule
  such as LoKr's "store a factor as a rank-r product when 2r < its larger side" needs it.
- `if_eq(name, "value", x, y)`: `x` when the string hyperparameter `name` equals `"value"`, else `y` (only
  the chosen branch is evaluated). The one place a string may appear: a method whose count depends on a
  choice (RoAd's `variant`, MiSS's `init`) says so in its formula. `name` must be a symbol, `"value"` a
  string literal.
- `factor_a(d, f)`, `factor_b(d, f)`: the two factors, `factor_a(d, f) * factor_b(d, f) = d`, of the
  Kronecker factorisation of a whole `d >= 1` that LyCORIS and peft's LoKr use (`factorization(d, f)` in
  `peft/tuners/lokr/layer.py`): when `f >= 1` divides `d` they are `(f, d / f)`; otherwise, scanning the
  divisors of `d` upwards and stopping at the first one `>= sqrt(d)`, the last divisor `<= f` (any when
  `f = -1`) and its co-factor, the smaller first. So `factor_a(4096, -1) = 64`, `factor_b(11008, -1) = 128`,
  `factor_a(128, 4) = 4`, `factor_a(127, -1) = 1`. `d` is at most 10**12.

    >>> f = Formula.parse("r * (d_in + d_out)")
    >>> f.evaluate({"r": 8, "d_in": 4096, "d_out": 4096})
    65536
    >>> f.latex()
    'r \\\\cdot \\\\left(d_{\\\\text{in}} + d_{\\\\text{out}}\\\\right)'
"""
from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from fractions import Fraction
from collections.abc import Mapping

#: The shared vocabulary of architecture symbols, with their meaning.
ARCH_SYMBOLS: dict[str, str] = {
    "n_layers": "number of Transformer blocks the method is applied to",
    "d_model": "hidden size",
    "d_ff": "inner size of the feed-forward network",
    "n_heads": "number of attention (query) heads",
    "d_head": "size of one attention head",
    "n_kv_heads": "number of key/value heads (grouped-query attention; equals n_heads otherwise)",
    "vocab_size": "vocabulary size",
    "n_targets": "number of targeted modules in one block",
    "d_in": "input size of the targeted module (per-target formulas only)",
    "d_out": "output size of the targeted module (per-target formulas only)",
    "is_ffn": "1 when the targeted module is a feed-forward projection (gate, up, down), else 0 (per-target formulas only)",
    "n_params": "parameter count of the base model (for methods that train all or a share of it)",
    "n_bias": "number of bias parameters in the base model",
}

_LATEX_NAMES = {
    "n_layers": "L", "d_model": r"d_{\text{model}}", "d_ff": r"d_{\text{ff}}", "n_heads": "n_h",
    "d_head": r"d_h", "n_kv_heads": r"n_{kv}", "vocab_size": "|V|", "n_targets": r"n_{\text{t}}",
    "d_in": r"d_{\text{in}}", "d_out": r"d_{\text{out}}", "is_ffn": r"\mathbb{1}_{\text{ffn}}", "n_params": r"|\Theta|",
    "n_bias": r"|\Theta_{\text{bias}}|",
    "alpha": r"\alpha", "beta": r"\beta", "gamma": r"\gamma", "lambda": r"\lambda", "rho": r"\rho",
}

_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//"}
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, "//": 2}
#: name -> (fewest, most) arguments; `None`: no upper limit
FUNCTIONS: dict[str, tuple[int, int | None]] = {
    "min": (2, None), "max": (2, None), "if_lt": (4, 4), "if_eq": (4, 4), "factor_a": (2, 2), "factor_b": (2, 2),
}
_FUNCS = tuple(FUNCTIONS)
MAX_FACTORISED = 10**12  # factor_a/factor_b try divisors up to sqrt(d): bounded work
MAX_FORMULA_CHARS = 500


class FormulaError(ValueError):
    """A formula that does not parse, uses a forbidden construct, or names an unknown symbol."""


@dataclass(frozen=True)
class Formula:
    source: str
    tree: ast.expr

    # -- parsing ------------------------------------------------------------------------------
    @classmethod
    def parse(cls, source: str) -> "Formula":
        if not isinstance(source, str) or not source.strip():
            raise FormulaError("a formula must be a non-empty string")
        if len(source) > MAX_FORMULA_CHARS:
            raise FormulaError(f"formula longer than {MAX_FORMULA_CHARS} characters")
        try:
            module = ast.parse(source.strip(), mode="eval")
        except SyntaxError as exc:
            raise FormulaError(f"cannot parse formula {source!r}: {exc.msg}") from None
        _check(module.body)
        return cls(source.strip(), module.body)

    # -- queries ------------------------------------------------------------------------------
    def symbols(self) -> set[str]:
        return {n.id for n in ast.walk(self.tree) if isinstance(n, ast.Name)} - set(_FUNCS)

    def string_tests(self) -> set[tuple[str, str]]:
        """(symbol, value) of every `if_eq(symbol, "value", ...)`: the symbols that must hold strings."""
        return {(n.args[0].id, n.args[1].value) for n in ast.walk(self.tree)  # type: ignore[attr-defined]
                if isinstance(n, ast.Call) and n.func.id == "if_eq"}  # type: ignore[attr-defined]

    def string_symbols(self) -> set[str]:
        return {name for name, _ in self.string_tests()}

    def unknown_symbols(self, allowed: set[str] | frozenset[str]) -> list[str]:
        return sorted(self.symbols() - set(allowed))

    def evaluate(self, env: Mapping[str, int | float | Fraction | str]) -> int | Fraction:
        """Evaluate exactly; a whole result comes back as int."""
        missing = sorted(s for s in self.symbols() if s not in env)
        if missing:
            raise FormulaError(f"no value for symbol(s) {', '.join(missing)} in {self.source!r}")
        value = _eval(self.tree, env)
        if isinstance(value, Fraction) and value.denominator == 1:
            return int(value)
        return value

    def latex(self) -> str:
        return _latex(self.tree)[0]

    def __str__(self) -> str:
        return self.source


def _check(node: ast.AST) -> None:
    """Whitelist: reject every node type that is not plain arithmetic."""
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _BINOPS:
            raise FormulaError(f"operator {type(node.op).__name__} is not allowed (use + - * / //)")
        _check(node.left)
        _check(node.right)
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, (ast.USub, ast.UAdd)):
            raise FormulaError(f"operator {type(node.op).__name__} is not allowed")
        _check(node.operand)
    elif isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise FormulaError(f"only numbers are allowed as constants, not {node.value!r}")
    elif isinstance(node, ast.Name):
        if node.id in _FUNCS:
            raise FormulaError(f"'{node.id}' is a function; call it as {node.id}(a, b)")
        if node.id.startswith("_"):
            raise FormulaError(f"symbol '{node.id}' is not allowed")
    elif isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            raise FormulaError(f"only {', '.join(f + '(...)' for f in FUNCTIONS)} may be called")
        fewest, most = FUNCTIONS[node.func.id]
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise FormulaError(f"{node.func.id}() takes plain arguments only")
        if len(node.args) < fewest or (most is not None and len(node.args) > most):
            wanted = f"{fewest} or more" if most is None else str(fewest)
            raise FormulaError(f"{node.func.id}() takes {wanted} arguments, not {len(node.args)}")
        if node.func.id == "if_eq":
            name, value = node.args[0], node.args[1]
            if not isinstance(name, ast.Name) or name.id in _FUNCS or name.id.startswith("_"):
                raise FormulaError("if_eq() compares a hyperparameter: its first argument must be a symbol")
            if not isinstance(value, ast.Constant) or not isinstance(value.value, str) or not value.value:
                raise FormulaError("if_eq() compares with a non-empty string literal: its second argument, e.g. \"road_2\"")
            for arg in node.args[2:]:
                _check(arg)
            return
        for arg in node.args:
            _check(arg)
    else:
        raise FormulaError(f"{type(node).__name__} is not allowed in a formula")


def _num(value: int | float | Fraction) -> int | Fraction:
    if isinstance(value, bool):
        raise FormulaError("a boolean is not a number")
    if isinstance(value, float):
        return Fraction(value).limit_denominator(10**9) if not value.is_integer() else int(value)
    return value


def _eval(node: ast.expr, env: Mapping[str, int | float | Fraction | str]) -> int | Fraction:
    if isinstance(node, ast.Constant):
        return _num(node.value)
    if isinstance(node, ast.Name):
        return _num(env[node.id])
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, env)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.Call):
        name = node.func.id  # type: ignore[attr-defined]
        if name == "if_lt":  # lazy: the branch not taken is never evaluated
            a, b, then, other = node.args
            return _eval(then if _eval(a, env) < _eval(b, env) else other, env)
        if name == "if_eq":  # lazy, like if_lt
            symbol, value, then, other = node.args
            given = env[symbol.id]  # type: ignore[attr-defined]
            if not isinstance(given, str):
                raise FormulaError(f"if_eq(): '{symbol.id}' must be a string, not {given!r}")  # type: ignore[attr-defined]
            return _eval(then if given == value.value else other, env)  # type: ignore[attr-defined]
        args = [_eval(a, env) for a in node.args]
        if name in ("factor_a", "factor_b"):
            pair = kronecker_factors(*args, function=name)
            return pair[0] if name == "factor_a" else pair[1]
        return min(args) if name == "min" else max(args)
    assert isinstance(node, ast.BinOp)
    a, b = _eval(node.left, env), _eval(node.right, env)
    op = type(node.op)
    if op in (ast.Div, ast.FloorDiv) and b == 0:
        raise FormulaError("division by zero")
    if op is ast.Add:
        return a + b
    if op is ast.Sub:
        return a - b
    if op is ast.Mult:
        return a * b
    if op is ast.Div:
        return Fraction(a) / Fraction(b)
    return a // b


def _whole_number(value: int | Fraction, function: str, what: str) -> int:
    if isinstance(value, Fraction):
        if value.denominator != 1:
            raise FormulaError(f"{function}(): {what} must be a whole number, not {value}")
        value = int(value)
    return value


def kronecker_factors(d: int | Fraction, f: int | Fraction, *, function: str = "factor_a") -> tuple[int, int]:
    """(a, b) with a * b = d: LyCORIS's `factorization(d, f)` as peft 0.21's LoKr uses it (see the module doc).

    Same result as peft's loop, in O(sqrt(d)) steps: peft walks the divisors of d upwards from 1, keeps each
    one while it is <= f (f = -1: no limit) and stops after the first divisor >= sqrt(d); the last kept
    divisor and its co-factor come back smaller first. An f >= 1 that divides d is returned as is, first.
    """
    d, f = _whole_number(d, function, "d"), _whole_number(f, function, "f")
    if d < 1:
        raise FormulaError(f"{function}(): d must be at least 1, not {d}")
    if d > MAX_FACTORISED:
        raise FormulaError(f"{function}(): d = {d} is larger than {MAX_FACTORISED:,}")
    if f > 0 and d % f == 0:
        return f, d // f
    limit = d if f == -1 else f
    small = [i for i in range(1, math.isqrt(d) + 1) if d % i == 0]   # divisors <= sqrt(d), ascending
    walk = small[1:] + ([d // small[-1]] if small[-1] ** 2 != d else [])  # ... then the first one >= sqrt(d)
    m = 1
    for divisor in walk:
        if divisor > limit:
            break
        m = divisor
    return min(m, d // m), max(m, d // m)


def _latex_name(name: str) -> str:
    if name in _LATEX_NAMES:
        return _LATEX_NAMES[name]
    if len(name) == 1:
        return name
    head, _, tail = name.partition("_")
    if tail and len(head) == 1:  # n_virtual_tokens -> n_{\text{virtual tokens}}
        return head + r"_{\text{" + tail.replace("_", " ") + "}}"
    return r"\mathit{" + name.replace("_", r"\_") + "}"


def _latex_text(text: str) -> str:
    """A string literal for \\text{...}: TeX's special characters escaped (the value comes from the catalog)."""
    special = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "_": r"\_", "$": r"\$", "&": r"\&", "#": r"\#",
               "%": r"\%", "^": r"\^{}", "~": r"\~{}"}
    return "".join(special.get(c, c) for c in text)


def _latex(node: ast.expr) -> tuple[str, int]:
    """Return (latex, precedence); precedence 3 means atomic."""
    if isinstance(node, ast.Constant):
        if isinstance(node.value, str):  # if_eq's literal
            return rf"\text{{{_latex_text(node.value)}}}", 3
        return f"{node.value:,}".replace(",", "{,}"), 3
    if isinstance(node, ast.Name):
        return _latex_name(node.id), 3
    if isinstance(node, ast.UnaryOp):
        inner, prec = _latex(node.operand)
        inner = inner if prec >= 2 else rf"\left({inner}\right)"
        return ("-" if isinstance(node.op, ast.USub) else "+") + inner, 2
    if isinstance(node, ast.Call):
        name = node.func.id  # type: ignore[attr-defined]
        parts = [_latex(a)[0] for a in node.args]
        if name == "if_lt":  # a case distinction
            a, b, then, other = parts
            return (rf"\left\{{\begin{{array}}{{ll}} {then} & \text{{if }} {a} < {b} \\ {other} & "
                    rf"\text{{otherwise}} \end{{array}}\right.", 3)
        if name == "if_eq":  # a chain if_eq(s, "a", x, if_eq(s, "b", y, z)) on one symbol is one case list
            rows, at = [], node
            while (isinstance(at, ast.Call) and at.func.id == "if_eq"  # type: ignore[attr-defined]
                   and at.args[0].id == node.args[0].id):  # type: ignore[attr-defined]
                symbol, value, then = (_latex(a)[0] for a in at.args[:3])
                rows.append(rf"{then} & \text{{if }} {symbol} = {value}")
                at = at.args[3]
            rows.append(rf"{_latex(at)[0]} & \text{{otherwise}}")
            return r"\left\{\begin{array}{ll} " + r" \\ ".join(rows) + r" \end{array}\right.", 3
        head = rf"\{name}" if name in ("min", "max") else rf"\operatorname{{{name.replace('_', chr(92) + '_')}}}"
        return rf"{head}\left({', '.join(parts)}\right)", 3
    assert isinstance(node, ast.BinOp)
    op = _BINOPS[type(node.op)]
    left, lp = _latex(node.left)
    right, rp = _latex(node.right)
    if op == "/":
        return rf"\frac{{{left}}}{{{right}}}", 3
    if op == "//":
        if isinstance(node.right, ast.Constant) and node.right.value == 1:  # x // 1: x rounded down
            return rf"\left\lfloor {left} \right\rfloor", 3
        return rf"\left\lfloor \frac{{{left}}}{{{right}}} \right\rfloor", 3
    prec = _PRECEDENCE[op]
    if lp < prec:
        left = rf"\left({left}\right)"
    # right operand of - needs brackets at equal precedence: a - (b + c)
    if rp < prec or (op == "-" and rp == prec):
        right = rf"\left({right}\right)"
    symbol = {"+": "+", "-": "-", "*": r"\cdot"}[op]
    return f"{left} {symbol} {right}", prec
