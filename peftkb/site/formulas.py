"""Trainable-parameter formulas as LaTeX for the pages: the count N, line-broken when wide, and its symbols."""
from __future__ import annotations

import ast
import re
from typing import Any

from peftkb.formula import ARCH_SYMBOLS, Formula
from peftkb.model import Method, TrainableParams

def _brace_group(tex: str, start: int) -> int:
    """Index just past the {...} group opening at tex[start]."""
    depth = 0
    for i in range(start, len(tex)):
        if tex[i] == "{":
            depth += 1
        elif tex[i] == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    raise ValueError("unbalanced braces")


def formula_latex(source: str) -> str:
    """LaTeX of a catalog formula, with `x // 1` (round down to a whole count) shown as ⌊x⌋, not ⌊x/1⌋."""
    tex = Formula.parse(source).latex()
    head = r"\left\lfloor \frac{"
    out, at = [], 0
    while (i := tex.find(head, at)) >= 0:
        num_end = _brace_group(tex, i + len(head) - 1)
        tail = "{1} \\right\\rfloor"
        if tex.startswith(tail, num_end):
            out.append(tex[at:i] + r"\left\lfloor " + tex[i + len(head):num_end - 1] + r" \right\rfloor")
            at = num_end + len(tail)
        else:
            out.append(tex[at:i + len(head)])
            at = i + len(head)
    return "".join(out) + tex[at:]


def _needs_parens(source: str) -> bool:
    tree = Formula.parse(source).tree
    return (isinstance(tree, ast.BinOp) and isinstance(tree.op, (ast.Add, ast.Sub))) or isinstance(tree, ast.UnaryOp)


def _wrap(source: str) -> str:
    tex = formula_latex(source)
    return rf"\left({tex}\right)" if _needs_parens(source) else tex


def count_latex(tp: TrainableParams) -> str:
    """The whole trainable-parameter count, N = L·Σ_targets f + L·g + h, as LaTeX."""
    parts = []
    if tp.per_target:
        roles = r",\,".join(rf"\text{{{re.sub(r'[^a-z]', '', t)}}}" for t in tp.targets)
        parts.append(rf"L \sum_{{t \in \{{{roles}\}}}} {_wrap(tp.per_target)}")
    if tp.per_layer:
        parts.append(rf"L \cdot {_wrap(tp.per_layer)}")
    if tp.total:
        parts.append(formula_latex(tp.total))
    return " + ".join(parts)


DISPLAY_WIDTH = 110  # characters of LaTeX source above which a displayed count is broken into lines


def _top_terms(source: str) -> list[str]:
    """The formula's top-level terms as sources, each with its sign: "a - b + c" -> ["a", "- b", "+ c"]."""
    tree = Formula.parse(source).tree
    terms: list[str] = []

    def walk(node: ast.expr, sign: str) -> None:
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
            walk(node.left, sign)
            right_sign = "+" if isinstance(node.op, ast.Add) else "-"
            if isinstance(node.right, ast.BinOp) and isinstance(node.right.op, (ast.Add, ast.Sub)):
                terms.append(f"{right_sign} ({ast.unparse(node.right)})")
            else:
                terms.append(f"{right_sign} {ast.unparse(node.right)}")
        else:
            terms.append(ast.unparse(node))

    walk(tree, "+")
    return terms


def display_count_latex(tp: TrainableParams) -> str:
    """`N = ...` for a method page: one line, or an aligned block with one top-level term per line when the
    formula is too wide for the column (X-LoRA's total, for one)."""
    flat = count_latex(tp)
    if len(flat) <= DISPLAY_WIDTH or tp.per_target or tp.per_layer or not tp.total:
        return "N = " + flat
    lines = []
    for term in _top_terms(tp.total):
        sign, body = (term[0], term[2:]) if term[:2] in ("+ ", "- ") else ("", term)
        lead = f"{sign} " if sign else ""
        tex = formula_latex(body)
        node = Formula.parse(body).tree
        if (len(tex) > DISPLAY_WIDTH * 0.7 and isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult)
                and isinstance(node.right, ast.BinOp) and isinstance(node.right.op, (ast.Add, ast.Sub))):
            # a * (b + c + d): the factor, then one term of the bracket per line
            inner = [formula_latex(t) if t[:2] not in ("+ ", "- ") else f"{t[0]} {formula_latex(t[2:])}"
                     for t in _top_terms(ast.unparse(node.right))]
            lines.append(lead + _wrap(ast.unparse(node.left)) + r" \cdot \Big(" + inner[0])
            lines += [r"\quad " + t for t in inner[1:-1]]
            lines.append(r"\quad " + inner[-1] + r" \Big)")
        else:
            lines.append(lead + tex)
    return r"\begin{aligned} N = {} & " + r" \\ & ".join(lines) + r" \end{aligned}"


def symbol_rows(m: Method) -> list[dict[str, Any]]:
    """Every symbol of the method's formulas, with its LaTeX, its name in the data and its meaning."""
    tp = m.trainable_params
    if tp is None:
        return []
    used: set[str] = set()
    for source in tp.formulas().values():
        used |= Formula.parse(source).symbols()
    if tp.per_target or tp.per_layer:
        used.add("n_layers")
    hyper = {h.name: h.meaning for h in m.hyperparameters}
    rows = []
    for sym in sorted(used, key=lambda s: (s not in hyper, s)):
        meaning = hyper.get(sym) or ARCH_SYMBOLS.get(sym, "")
        if sym == "n_layers":
            meaning = ARCH_SYMBOLS["n_layers"]
        rows.append({"tex": Formula.parse(sym).latex(), "name": sym, "meaning": meaning,
                     "kind": "hyperparameter" if sym in hyper else "architecture"})
    return rows
