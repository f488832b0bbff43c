"""Trainable-parameter formulas: a tiny arithmetic language, parsed and never `eval`ed.

A formula is an expression over numbers, `+ - * / //`, parentheses, `min(...)`/`max(...)` and
symbols. Symbols are architecture symbols (`ARCH_SYMBOLS`) or the method's hyperparameter names.
`/` is exact (fractions), so `r * d_model / 2` stays exact; a count must come out whole.

    >>> f = Formula.parse("r * (d_in + d_out)")
    >>> f.evaluate({"r": 8, "d_in": 4096, "d_out": 4096})
    65536
    >>> f.latex()
    'r \\\\cdot \\\\left(d_{\\\\text{in}} + d_{\\\\text{out}}\\\\right)'
"""
from __future__ import annotations

import ast
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
    "n_params": "parameter count of the base model (for methods that train all or a share of it)",
    "n_bias": "number of bias parameters in the base model",
}

_LATEX_NAMES = {
    "n_layers": "L", "d_model": r"d_{\text{model}}", "d_ff": r"d_{\text{ff}}", "n_heads": "n_h",
    "d_head": r"d_h", "n_kv_heads": r"n_{kv}", "vocab_size": "|V|", "n_targets": r"n_{\text{t}}",
    "d_in": r"d_{\text{in}}", "d_out": r"d_{\text{out}}", "n_params": r"|\Theta|",
    "n_bias": r"|\Theta_{\text{bias}}|",
    "alpha": r"\alpha", "beta": r"\beta", "gamma": r"\gamma", "lambda": r"\lambda", "rho": r"\rho",
}

_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//"}
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, "//": 2}
_FUNCS = ("min", "max")
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

    def unknown_symbols(self, allowed: set[str] | frozenset[str]) -> list[str]:
        return sorted(self.symbols() - set(allowed))

    def evaluate(self, env: Mapping[str, int | float | Fraction]) -> int | Fraction:
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
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCS:
            raise FormulaError("only min(...) and max(...) may be called")
        if node.keywords or len(node.args) < 2:
            raise FormulaError(f"{node.func.id}() takes two or more plain arguments")
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


def _eval(node: ast.expr, env: Mapping[str, int | float | Fraction]) -> int | Fraction:
    if isinstance(node, ast.Constant):
        return _num(node.value)
    if isinstance(node, ast.Name):
        return _num(env[node.id])
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, env)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.Call):
        args = [_eval(a, env) for a in node.args]
        return min(args) if node.func.id == "min" else max(args)  # type: ignore[attr-defined]
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


def _latex_name(name: str) -> str:
    if name in _LATEX_NAMES:
        return _LATEX_NAMES[name]
    if len(name) == 1:
        return name
    head, _, tail = name.partition("_")
    if tail and len(head) == 1:  # n_virtual_tokens -> n_{\text{virtual tokens}}
        return head + r"_{\text{" + tail.replace("_", " ") + "}}"
    return r"\mathit{" + name.replace("_", r"\_") + "}"


def _latex(node: ast.expr) -> tuple[str, int]:
    """Return (latex, precedence); precedence 3 means atomic."""
    if isinstance(node, ast.Constant):
        return f"{node.value:,}".replace(",", "{,}"), 3
    if isinstance(node, ast.Name):
        return _latex_name(node.id), 3
    if isinstance(node, ast.UnaryOp):
        inner, prec = _latex(node.operand)
        inner = inner if prec >= 2 else rf"\left({inner}\right)"
        return ("-" if isinstance(node.op, ast.USub) else "+") + inner, 2
    if isinstance(node, ast.Call):
        args = ", ".join(_latex(a)[0] for a in node.args)
        return rf"\{node.func.id}\left({args}\right)", 3  # type: ignore[attr-defined]
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
