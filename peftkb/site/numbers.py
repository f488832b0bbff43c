"""Concrete numbers for method pages: the trainable count and the peak-memory estimate on a few popular
models, computed at build time by peftkb.calculators with the catalog defaults, with the CLI lines that
reproduce them.

A method the calculators cannot evaluate on a model (no formula, a default out of range for it, a prompt
longer than its positions, a count that comes out zero) gets no row for that model: the page shows only
numbers the calculators stand behind, never a guess, and the build never fails on them.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

# the survey's encoder family, the model of peftkb's trusted LoRA fixture, and a common 8B decoder
PRESETS = ("roberta-base", "llama-3.2-3b", "llama-3-8b")
BATCH, SEQ = 1, 512  # the CLI's defaults (with bf16 weights, pure bf16 precision, AdamW)
GiB = 2**30


@dataclass(frozen=True)
class ModelNumbers:
    preset: str
    trainable: int
    percent: float         # of the model's own parameters
    peak_gib: float        # peak training memory, the CLI's `peak`
    quantize: str | None   # set when the estimate assumes a quantized base (QLoRA and kin)
    params_cli: str
    memory_cli: str


class Numbers:
    """Per-method numbers on PRESETS, computed once per build (the models are loaded once)."""

    def __init__(self, presets: tuple[str, ...] = PRESETS) -> None:
        self.presets = presets
        self._cache: dict[str, list[ModelNumbers]] = {}

    @cached_property
    def _archs(self) -> dict[str, Any]:
        from peftkb.calculators.architecture import load_model

        archs = {}
        for name in self.presets:
            try:
                archs[name] = load_model(name)
            except Exception:  # a preset that does not load gives no numbers, never a failed build
                continue
        return archs

    def cli(self, method: Any) -> str:
        """The commands that print this method's numbers, one per line."""
        rows = self.of(method)
        return "\n".join([r.params_cli for r in rows] + [r.memory_cli for r in rows])

    def on(self, method: Any, preset: str) -> ModelNumbers | None:
        return next((r for r in self.of(method) if r.preset == preset), None)

    def of(self, method: Any) -> list[ModelNumbers]:
        if method.id not in self._cache:
            self._cache[method.id] = self._compute(method)
        return self._cache[method.id]

    def _compute(self, method: Any) -> list[ModelNumbers]:
        from peftkb.calculators.memory import estimate_memory
        from peftkb.calculators.params import count_trainable

        if getattr(method, "trainable_params", None) is None:
            return []
        rows = []
        for name, arch in self._archs.items():
            try:  # the calculators validate their input and refuse impossible numbers (UsageError)
                count = count_trainable(method, arch)
                est = estimate_memory(method, arch, count, batch=BATCH, seq=SEQ)
            except Exception:  # whatever the calculators refuse or fail on: no row, and the build goes on
                continue
            if count.trainable <= 0 or est.peak <= 0:
                continue
            rows.append(ModelNumbers(
                preset=name, trainable=count.trainable, percent=count.percent, peak_gib=est.peak / GiB,
                quantize=est.quantize, params_cli=f"peftkb params {method.id} -m {name}",
                memory_cli=f"peftkb memory {method.id} -m {name} --batch {BATCH} --seq {SEQ}"))
        return rows
