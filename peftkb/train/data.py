"""Training data from a user's file: JSONL or CSV rows, validated once, split, tokenized and batched.

A file holds one of three row shapes, decided by the first row's fields:

    text                 causal-lm: the loss covers every token
    text + label         classification (or causal-lm on the text alone, with --task causal-lm)
    prompt + completion  causal-lm: the loss covers the completion tokens only

Every row is checked here, at the one boundary between the file and the trainer; a bad row stops the run
with `FILE:LINE: FIELD: message` before anything is written. Reading and checking import no torch.
"""
from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftkb.errors import UsageError

SHAPES = {"prompt-completion": ("prompt", "completion"), "text-label": ("text", "label"), "text": ("text",)}
TASKS = ("causal-lm", "classification")


@dataclass(frozen=True)
class Row:
    line: int                 # 1-based line of the row in its file (CSV: the line the record ends on)
    fields: dict[str, str]    # the shape's fields, as strings


@dataclass(frozen=True)
class Dataset:
    path: Path
    shape: str                # a key of SHAPES
    rows: tuple[Row, ...]

    @property
    def labels(self) -> list[str]:
        """The distinct labels in a stable order: numeric when every label is an integer, else sorted text."""
        found = {r.fields["label"] for r in self.rows if "label" in r.fields}
        if all(_is_int(x) for x in found):
            return sorted(found, key=int)
        return sorted(found)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _bad(path: Path, line: int, field: str, message: str) -> UsageError:
    return UsageError(f"{path}:{line}: {field}: {message}" if field else f"{path}:{line}: {message}")


def _shape_of(path: Path, line: int, keys: set[str]) -> str:
    for shape, fields in SHAPES.items():
        if set(fields) <= keys:
            return shape
    if "prompt" in keys or "completion" in keys:
        missing = "completion" if "prompt" in keys else "prompt"
        return _raise(_bad(path, line, missing, "missing (a row with 'prompt' needs 'completion' and vice versa)"))
    return _raise(_bad(path, line, "text", "missing; a row needs 'text', 'text' and 'label', or 'prompt' and "
                                           f"'completion' (found: {', '.join(sorted(keys)) or 'no fields'})"))


def _raise(exc: Exception) -> Any:
    raise exc


def _row(path: Path, line: int, shape: str, record: dict[str, Any]) -> Row:
    fields: dict[str, str] = {}
    for name in SHAPES[shape]:
        if name not in record or record[name] is None:
            raise _bad(path, line, name, "missing")
        value = record[name]
        if name == "label":
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise _bad(path, line, name, f"must be a string or an integer, not {type(value).__name__}")
            value = str(value).strip()
            if not value:
                raise _bad(path, line, name, "empty")
        elif not isinstance(value, str):
            raise _bad(path, line, name, f"must be a string, not {type(value).__name__}")
        elif not value.strip():
            raise _bad(path, line, name, "empty")
        fields[name] = value
    return Row(line, fields)


def read(path: Path) -> Dataset:
    """Read and check every row of a .jsonl or .csv file."""
    if not path.is_file():
        raise UsageError(f"{path}: no such data file")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise UsageError(f"{path}: unknown data format '{suffix}'; use .jsonl (one JSON object a line) or .csv")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    records = _jsonl(path, text) if suffix == ".jsonl" else _csv(path, text)
    if not records:
        raise UsageError(f"{path}: no rows")
    first_line, first = records[0]
    shape = _shape_of(path, first_line, set(first))
    return Dataset(path, shape, tuple(_row(path, line, shape, rec) for line, rec in records))


def _jsonl(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _bad(path, number, "", f"not valid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(record, dict):
            raise _bad(path, number, "", f"expected a JSON object, found {type(record).__name__}")
        out.append((number, record))
    return out


def _csv(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.reader(text.splitlines(keepends=True))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return []
    except csv.Error as exc:
        raise _bad(path, 1, "", f"bad CSV: {exc}") from None
    out = []
    try:
        for values in reader:
            if not any(v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise _bad(path, reader.line_num, "", f"{len(values)} values for {len(header)} columns "
                                                      f"({', '.join(header)})")
            out.append((reader.line_num, dict(zip(header, values))))
    except csv.Error as exc:
        raise _bad(path, reader.line_num, "", f"bad CSV: {exc}") from None
    return out


def task_for(data: Dataset, task: str | None) -> str:
    """The task: given, or classification for labelled rows and causal-lm otherwise."""
    if task is None:
        return "classification" if data.shape == "text-label" else "causal-lm"
    if task not in TASKS:
        raise UsageError(f"--task: '{task}' is not one of {', '.join(TASKS)}")
    if task == "classification" and data.shape != "text-label":
        raise _bad(data.path, data.rows[0].line, "label", "missing (--task classification needs 'text' and 'label')")
    if task == "classification" and len(data.labels) < 2:
        raise UsageError(f"{data.path}: label: only one distinct label ({data.labels[0]}); classification needs two")
    return task


def split(rows: tuple[Row, ...], eval_share: float, seed: int) -> tuple[list[Row], list[Row]]:
    """(train, held-out): a seeded shuffle, then the last `eval_share` of it held out (at least one row)."""
    order = list(rows)
    random.Random(seed).shuffle(order)
    if eval_share <= 0:
        return order, []
    n_eval = max(1, round(len(order) * eval_share))
    if n_eval >= len(order):
        raise UsageError(f"--eval-share {eval_share} leaves no training rows out of {len(order)}")
    return order[:-n_eval], order[-n_eval:]


# -- tokens (torch from here on, imported inside the functions) ------------------------------------------
def encode(rows: list[Row], tokenizer: Any, task: str, labels: list[str], max_length: int) -> list[dict[str, list[int]]]:
    """Token ids per row: {"input_ids", "labels"} (causal-lm: -100 where no loss) or {"input_ids", "label"}."""
    out = []
    eos = tokenizer.eos_token_id
    for row in rows:
        f = row.fields
        if task == "classification":
            ids = tokenizer(f["text"], truncation=True, max_length=max_length)["input_ids"]
            out.append({"input_ids": ids, "label": labels.index(f["label"])})
            continue
        if "prompt" in f:
            prompt = tokenizer(f["prompt"])["input_ids"]
            completion = tokenizer(f["completion"], add_special_tokens=False)["input_ids"]
            completion = completion + ([eos] if eos is not None else [])
            ids = (prompt + completion)[:max_length]
            target = ([-100] * len(prompt) + completion)[:max_length]
        else:
            ids = tokenizer(f["text"], truncation=True, max_length=max_length)["input_ids"]
            target = list(ids)
        out.append({"input_ids": ids, "labels": target})
    return out


def collate(examples: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-pad a micro-batch: (B, T) input_ids, attention_mask, and labels (B, T) or (B,)."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)     # (B, T)
    mask = torch.zeros((len(examples), width), dtype=torch.long)           # (B, T)
    for i, e in enumerate(examples):
        ids[i, :len(e["input_ids"])] = torch.tensor(e["input_ids"])
        mask[i, :len(e["input_ids"])] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if "label" in examples[0]:
        batch["labels"] = torch.tensor([e["label"] for e in examples])     # (B,)
    else:
        labels = torch.full((len(examples), width), -100, dtype=torch.long)  # (B, T); -100: no loss
        for i, e in enumerate(examples):
            labels[i, :len(e["labels"])] = torch.tensor(e["labels"])
        batch["labels"] = labels
    return batch


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The training rows' order in one epoch: a permutation fixed by (seed, epoch) alone, so a resumed run
    and every process of a distributed run see the same order."""
    order = list(range(n))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return order
