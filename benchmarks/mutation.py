"""A small mutation pass over reference_impls/: do the tests notice a wrong constant or operator?

For each method file it enumerates mutation sites with `ast` (numeric constants: n -> n + 1, x -> 2x or
1 for 0; binary operators: + <-> -, * <-> /, // -> /, ** -> *; comparisons: < <-> <=, > <-> >=,
== <-> !=), skipping docstrings, the config dataclass (its defaults are pinned against the catalog
anyway) and code that only raises errors. A deterministic sample of up to --per-file sites is tried; each
mutant is loaded in a fresh pytest process *in memory* (an import hook serves the mutated source for
that one module; the checkout is never written, so parallel work in it is not disturbed) and runs the
method's own test file plus its rows of test_common.py, stopping at the first failure.

    .venv/bin/python benchmarks/mutation.py lora adalora increlora --per-file 8
    .venv/bin/python benchmarks/mutation.py --wave1 --per-file 6 --json out.json

Not a unit test: it takes minutes. Prints, per method, mutants tried / killed / survived, each survivor
with its line, and the overall survival rate.
"""
from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPLS = ROOT / "reference_impls"
TESTS = ROOT / "tests" / "reference_impls"

WAVE1 = ["lora", "adalora", "qlora", "ia3", "bitfit", "child-tuning", "prompt-tuning", "prefix-tuning",
         "sequential-adapter", "mam-adapter", "propetl", "full-fine-tuning"]

SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
        ast.Pow: ast.Mult}
CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq}

# the runner: serve the mutated source for one module, then run pytest in this process
RUNNER = r"""
import importlib.abc, importlib.util, sys
name, path = sys.argv[1], sys.argv[2]
class Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, p, target=None):
        return importlib.util.spec_from_file_location(fullname, path) if fullname == name else None
sys.meta_path.insert(0, Finder())
import pytest
sys.exit(pytest.main(sys.argv[3:]))
"""


@dataclass
class Site:
    index: int          # position in the walk order, to rebuild the same mutation on a fresh tree
    line: int
    description: str


def _skipped_lines(tree: ast.Module) -> set[int]:
    """Lines of docstrings, ...Config dataclasses and `raise` statements: not mutated."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            skip.update(range(body[0].lineno, body[0].end_lineno + 1))
        if isinstance(node, ast.ClassDef) and node.name.endswith("Config"):
            skip.update(range(node.lineno, node.end_lineno + 1))
        if isinstance(node, (ast.Raise, ast.Assert)):
            skip.update(range(node.lineno, node.end_lineno + 1))
        if isinstance(node, ast.JoinedStr):  # messages
            skip.update(range(node.lineno, node.end_lineno + 1))
    return skip


def _candidates(tree: ast.Module) -> list[tuple[ast.AST, str]]:
    skip = _skipped_lines(tree)
    out: list[tuple[ast.AST, str]] = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", None)
        if line is None or line in skip:
            continue
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            out.append((node, f"constant {node.value!r}"))
        elif isinstance(node, ast.BinOp) and type(node.op) in SWAP:
            out.append((node, f"{type(node.op).__name__} -> {SWAP[type(node.op)].__name__}"))
        elif isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in CMP:
            out.append((node, f"{type(node.ops[0]).__name__} -> {CMP[type(node.ops[0])].__name__}"))
    return out


def _mutate(node: ast.AST) -> None:
    if isinstance(node, ast.Constant):
        v = node.value
        node.value = v + 1 if isinstance(v, int) else (2 * v if v else 1.0)
    elif isinstance(node, ast.BinOp):
        node.op = SWAP[type(node.op)]()
    elif isinstance(node, ast.Compare):
        node.ops = [CMP[type(node.ops[0])]()]


def sites(path: Path) -> list[Site]:
    tree = ast.parse(path.read_text())
    return [Site(i, getattr(n, "lineno", 0), d) for i, (n, d) in enumerate(_candidates(tree))]


def mutant_source(path: Path, site: Site) -> str:
    tree = ast.parse(path.read_text())
    node, _ = _candidates(tree)[site.index]
    _mutate(node)
    return ast.unparse(ast.fix_missing_locations(tree))


def test_args(method_id: str) -> list[str]:
    mod = method_id.replace("-", "_")
    args = [str(TESTS / "test_common.py"), "-k", method_id]
    own = TESTS / f"test_{mod}.py"
    files = [str(own)] if own.exists() else []
    # test_common rows are selected by -k; the method's own file runs whole (a second pytest call)
    return files, args


def run_mutant(method_id: str, site: Site, timeout: int) -> str:
    """'killed', 'survived' or 'timeout'."""
    mod = method_id.replace("-", "_")
    path = IMPLS / f"{mod}.py"
    src = mutant_source(path, site)
    files, common = test_args(method_id)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}:{TESTS}"}
    with tempfile.TemporaryDirectory() as tmp:
        mutated = Path(tmp) / f"{mod}.py"
        mutated.write_text(src)
        base = [sys.executable, "-c", RUNNER, f"reference_impls.{mod}", str(mutated),
                "-x", "-q", "-p", "no:cacheprovider", "--no-header", "-W", "ignore"]
        for selection in ([*files] if files else []), common:
            if not selection:
                continue
            try:
                rc = subprocess.run(base + selection, cwd=ROOT, env=env, capture_output=True,
                                    timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                return "timeout"  # an infinite loop is noticed too, counted as killed
            if rc == 1:
                return "killed"
            if rc not in (0, 5):  # 5: nothing selected; anything else (import error, crash) kills
                return "killed"
    return "survived"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("methods", nargs="*")
    ap.add_argument("--wave1", action="store_true", help="the survey's experiment methods (+ full FT)")
    ap.add_argument("--per-file", type=int, default=8, help="mutants sampled per method file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    methods = (WAVE1 if args.wave1 else []) + args.methods
    results: dict[str, list[dict]] = {}
    total = killed = 0
    for method_id in methods:
        path = IMPLS / f"{method_id.replace('-', '_')}.py"
        if not path.exists():
            print(f"{method_id}: no reference implementation, skipped")
            continue
        all_sites = sites(path)
        rng = random.Random(f"{args.seed}:{method_id}")
        chosen = sorted(rng.sample(all_sites, min(args.per_file, len(all_sites))), key=lambda s: s.index)
        rows = []
        for site in chosen:
            t0 = time.perf_counter()
            outcome = run_mutant(method_id, site, args.timeout)
            rows.append({"line": site.line, "mutation": site.description, "outcome": outcome,
                         "seconds": round(time.perf_counter() - t0, 1)})
            total += 1
            killed += outcome != "survived"
            print(f"  {method_id}:{site.line} {site.description}: {outcome}", flush=True)
        survivors = [r for r in rows if r["outcome"] == "survived"]
        print(f"{method_id}: {len(rows)} mutants of {len(all_sites)} sites, {len(rows) - len(survivors)} killed, "
              f"{len(survivors)} survived", flush=True)
        results[method_id] = rows
    if total:
        print(f"overall: {total} mutants, {killed} killed, {total - killed} survived "
              f"(survival rate {100 * (total - killed) / total:.1f}%)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
