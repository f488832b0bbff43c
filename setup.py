"""Ships the knowledge base inside the wheel; everything else is configured in pyproject.toml.

A wheel installs into site-packages, where no `taxonomy/` or `catalog/` folder exists. `build_py`
copies them (and the survey's method list, the JSON schema and the measured evidence) into the package as `peftkb/_kb/`,
where `peftkb.cache.installed_root()` finds them when peftkb runs outside any checkout.
"""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

#: The knowledge base as it ships: globs relative to the project root.
KNOWLEDGE_BASE = ("taxonomy/*.yaml", "catalog/*.yaml", "catalog/UNVERIFIED.md", "catalog.schema.json",
                  "evidence/*.yaml", "benchmarks/results/*/results.jsonl")


class BuildPyWithKnowledgeBase(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout itself
        root = Path(__file__).resolve().parent
        target = Path(self.build_lib) / "peftkb" / "_kb"
        files = sorted({p for pattern in KNOWLEDGE_BASE for p in root.glob(pattern) if p.is_file()})
        if not any(p.match("taxonomy/taxonomy.yaml") for p in files):
            raise SystemExit("setup.py: taxonomy/taxonomy.yaml is missing; build from a full checkout")
        for path in files:
            dest = target / path.relative_to(root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            self.copy_file(str(path), str(dest))


setup(cmdclass={"build_py": BuildPyWithKnowledgeBase})
