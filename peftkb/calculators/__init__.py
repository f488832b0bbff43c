"""Calculators that need no torch: architecture symbols from a config, trainable-parameter counts, memory.

    architecture.py   config.json (dict) -> Architecture: symbols, a full parameter table, linear-module inventory
    params.py         catalog formula x Architecture -> exact trainable count with a per-module breakdown
    memory.py         trainable count x Architecture x batch/seq/dtype/optimizer -> peak training-memory estimate

Nothing here imports torch, transformers or peft; the tests check every count against models they build.
"""
from __future__ import annotations

from peftkb.calculators.architecture import Architecture, LinearModule, architecture_from_config, load_model

__all__ = ["Architecture", "LinearModule", "architecture_from_config", "load_model"]
