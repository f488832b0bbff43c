"""The project stands alone: no code, test or CI step reads the steering team's `../shared` folder.

`.ci/run` proves it by running the suite from a copy with no sibling folder; this test catches a new
reference early, with the file and line."""
from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import ROOT

#: A path in code that climbs out of the checkout into a sibling `shared` folder: a string literal holding
#: `../shared`, or a join of a parent folder with "shared". (Prose that names the folder as a provenance
#: note is not a read.)
SHARED_READ = re.compile(r"""["'][^"'\n]*\.\./shared|parents?(\[\d+\])?\s*/\s*["']shared["']""")
CHECKED = ["peftkb", "reference_impls", "tests", "benchmarks", ".ci", "Makefile", "setup.py", "pyproject.toml"]


def test_nothing_reads_the_shared_folder():
    offenders = []
    for top in CHECKED:
        path = ROOT / top
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.suffix in {".py", ""} and p.is_file()]
        for file in files:
            if file.resolve() == Path(__file__).resolve() or "__pycache__" in file.parts:
                continue
            for number, line in enumerate(file.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if SHARED_READ.search(line.split("#", 1)[0] if file.suffix == ".py" else line):
                    offenders.append(f"{file.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_the_pattern_catches_the_spellings_it_is_meant_to():
    for line in ('root.parent / "shared" / "survey"', "open('../shared/survey/taxonomy.yaml')",
                 "Path(__file__).parents[2] / 'shared'"):
        assert SHARED_READ.search(line), line
