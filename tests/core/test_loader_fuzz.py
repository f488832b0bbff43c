"""Fuzzing the loader: thousands of mutated catalog files, and it only ever reports problems.

Each case mutates a real catalog file (random bytes, control characters, invalid UTF-8, truncation,
duplicated or shuffled lines, broken indentation, alias bombs, deep nesting, odd scalars) and loads it
next to a sentinel file with one known mistake. The loader must return a catalog or raise CatalogError
whose every problem names a file (the mutated one or the sentinel) and a line; the sentinel's problem
must always be there, so one bad file never hides the others. Any other exception fails the test.
The random generator is seeded: a failure reproduces, and its seed and mutation are in the message.
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from peftkb import loader
from peftkb.errors import CatalogError
from tests.conftest import ROOT

BASES = ["lora.yaml", "prefix-tuning.yaml", "mam-adapter.yaml", "propetl.yaml", "ia3.yaml", "adalora.yaml"]
CASES = 2400
SENTINEL = "zz-sentinel.yaml"

ODD_SCALARS = ["9" * 5000, "-1", "0", "1e309", "1.0e309", ".nan", "-.inf", "2021-13-45", "2001-02-30", "null", "~",
               "[]", "{}", "''", "yes", "0x_1f", "0o777", "190:20:30", "!!binary aGk=", "!!python/name:os.system",
               "&a x", "*a", "<<: {a: 1}", "\"\\ud800\"", "\"\\x00\"", "'" + "x" * 10_000 + "'", "|\n  x\n y",
               "[" * 60 + "]" * 60, "{a: " * 60 + "1" + "}" * 60, "? [a]\n: b", "(" * 300 + "r" + ")" * 300,
               "r * " * 2000 + "r", "10 ** 10 ** 10", "__import__('os')", "d_in // 0", "max()"]


def _mutate(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    kind = rng.choice(["bytes", "control", "utf8", "truncate", "dup-line", "shuffle", "indent", "alias-bomb",
                       "deep", "scalar", "delete-line", "splice"])
    data = data or b"\n"  # a stacked mutation may have truncated the file to nothing
    lines = data.split(b"\n")
    if kind == "bytes":
        out = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] = rng.randrange(256)
        return kind, bytes(out)
    if kind == "control":
        at = rng.randrange(len(data))
        return kind, data[:at] + bytes([rng.choice([0, 1, 7, 8, 11, 12, 27, 127])]) + data[at:]
    if kind == "utf8":
        at = rng.randrange(len(data))
        return kind, data[:at] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x85"]) + data[at:]
    if kind == "truncate":
        return kind, data[: rng.randrange(len(data))]
    if kind == "dup-line":  # a duplicate key, or a duplicated list item
        i = rng.randrange(len(lines))
        return kind, b"\n".join(lines[: i + 1] + [lines[i]] + lines[i + 1:])
    if kind == "shuffle":
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
        return kind, b"\n".join(lines)
    if kind == "indent":
        i = rng.randrange(len(lines))
        lines[i] = b" " * rng.choice([1, 2, 3, 7]) + lines[i] if rng.random() < 0.5 else lines[i].lstrip()
        return kind, b"\n".join(lines)
    if kind == "alias-bomb":
        bomb = b"bomb_a: &a [x, x, x, x, x, x, x, x, x]\nbomb_b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        return kind, data + b"\n" + bomb
    if kind == "deep":
        depth = rng.choice([49, 50, 51, 200, 999, 1500])
        return kind, data + b"\nnotes: " + b"[" * depth + b"]" * depth + b"\n"
    if kind == "scalar":  # replace a value with something odd, keeping the key
        keyed = [i for i, line in enumerate(lines) if b": " in line] or [0]
        i = rng.choice(keyed)
        key = lines[i].split(b": ", 1)[0] or b"id"
        lines[i] = key + b": " + rng.choice(ODD_SCALARS).encode("utf-8", "surrogatepass")
        return kind, b"\n".join(lines)
    if kind == "delete-line":
        del lines[rng.randrange(len(lines))]
        return kind, b"\n".join(lines)
    # splice: a random slice of another position pasted in (broken structure that still looks like YAML)
    a, b = sorted(rng.randrange(len(data)) for _ in range(2))
    at = rng.randrange(len(data))
    return kind, data[:at] + data[a:b] + data[at:]


@pytest.fixture
def fuzz_root(tmp_path: Path, monkeypatch) -> Path:
    root = tmp_path / "kb"
    shutil.copytree(ROOT / "taxonomy", root / "taxonomy")
    (root / "catalog").mkdir()
    shutil.copytree(ROOT / "reference_impls", root / "reference_impls", ignore=shutil.ignore_patterns("__pycache__"))
    sentinel = (ROOT / "catalog" / "bitfit.yaml").read_text(encoding="utf-8").replace("id: bitfit", "id: zz-sentinel", 1)
    year = next(line for line in sentinel.splitlines() if line.startswith("year: "))
    (root / "catalog" / SENTINEL).write_text(sentinel.replace(year, "year: 1700", 1), encoding="utf-8")
    # the taxonomy is not mutated here: parse it once (test_taxonomy_fuzz mutates it)
    categories = loader._load_taxonomy(root, loader.ProblemList())
    monkeypatch.setattr(loader, "_load_taxonomy", lambda root, problems: categories)
    return root


def _check(root: Path, files: list[Path], label: str, expect_sentinel: bool = True) -> None:
    names = {f"catalog/{p.name}" for p in files}
    try:
        loader._load_and_check(root, files)
    except CatalogError as exc:
        assert exc.problems, label
        for problem in exc.problems:
            assert problem.file in names, (label, str(problem))
            assert problem.line >= 1 and problem.column >= 1, (label, str(problem))
            assert problem.message and "\n" not in str(problem), (label, str(problem))
        if expect_sentinel:
            assert any(p.file == f"catalog/{SENTINEL}" and p.field == "year" for p in exc.problems), label
    except Exception as exc:  # anything but CatalogError is a crash the user would see
        raise AssertionError(f"{label}: {type(exc).__name__}: {exc}") from exc
    else:
        assert not expect_sentinel, f"{label}: the sentinel's bad year was not reported"


@pytest.mark.parametrize("base", BASES)
def test_mutated_catalog_files_only_ever_give_located_problems(fuzz_root: Path, base: str):
    original = (ROOT / "catalog" / base).read_bytes()
    target = fuzz_root / "catalog" / base
    sentinel = fuzz_root / "catalog" / SENTINEL
    rng = random.Random(f"peftkb-loader-fuzz:{base}")
    for case in range(CASES // len(BASES)):
        kind, data = _mutate(rng, original)
        if rng.random() < 0.3:  # stack a second mutation on the first
            kind2, data = _mutate(rng, data)
            kind = f"{kind}+{kind2}"
        target.write_bytes(data)
        _check(fuzz_root, [target, sentinel], f"{base} case {case} ({kind})")


def test_random_bytes_are_a_problem_in_that_file(fuzz_root: Path):
    rng = random.Random("peftkb-loader-fuzz:noise")
    target = fuzz_root / "catalog" / "noise.yaml"
    sentinel = fuzz_root / "catalog" / SENTINEL
    for case in range(200):
        target.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))))
        _check(fuzz_root, [target, sentinel], f"noise case {case}")


def test_mutated_taxonomy_gives_located_problems(tmp_path: Path):
    root = tmp_path / "kb"
    shutil.copytree(ROOT / "taxonomy", root / "taxonomy")
    (root / "catalog").mkdir()
    original = (ROOT / "taxonomy" / "taxonomy.yaml").read_bytes()
    rng = random.Random("peftkb-loader-fuzz:taxonomy")
    for case in range(150):
        kind, data = _mutate(rng, original)
        (root / "taxonomy" / "taxonomy.yaml").write_bytes(data)
        problems = loader.ProblemList()
        try:
            loader._load_taxonomy(root, problems)
        except Exception as exc:
            raise AssertionError(f"taxonomy case {case} ({kind}): {type(exc).__name__}: {exc}") from exc
        for problem in problems.items:
            assert problem.file == "taxonomy/taxonomy.yaml" and problem.line >= 1, (case, kind, str(problem))
