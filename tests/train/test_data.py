"""Reading the user's data file: the three row shapes, one clear error per bad row, the split and the order."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftkb.errors import UsageError
from peftkb.train import data as D
from tests.conftest import run_cli
from tests.train.conftest import DATA


def test_the_three_shapes_are_recognised():
    assert D.read(DATA / "instructions.jsonl").shape == "prompt-completion"
    assert D.read(DATA / "notes.jsonl").shape == "text"
    topics = D.read(DATA / "topics.csv")
    assert topics.shape == "text-label" and topics.labels == ["cooking", "sport", "weather"]
    assert len(topics.rows) == 36 and topics.rows[0].line == 2  # line 1 is the header


def test_task_follows_the_shape_unless_given():
    assert D.task_for(D.read(DATA / "topics.csv"), None) == "classification"
    assert D.task_for(D.read(DATA / "topics.csv"), "causal-lm") == "causal-lm"
    assert D.task_for(D.read(DATA / "notes.jsonl"), None) == "causal-lm"
    with pytest.raises(UsageError, match=r"notes.jsonl:1: label: missing"):
        D.task_for(D.read(DATA / "notes.jsonl"), "classification")


def test_integer_labels_sort_as_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": f"t{i}", "label": lab}) + "\n" for i, lab in enumerate([10, 9, 2])))
    assert D.read(path).labels == ["2", "9", "10"]


@pytest.mark.parametrize("name,text,message", [
    ("a.jsonl", '{"prompt": "p", "completion": "c"}\n\n{"prompt": "q"}\n', r"a.jsonl:3: completion: missing"),
    ("b.jsonl", '{"text": "x", "label": "a"}\n{"text": "y"}\n', r"b.jsonl:2: label: missing"),
    ("c.jsonl", '{"text": "x"}\n{"text": 5}\n', r"c.jsonl:2: text: must be a string, not int"),
    ("d.jsonl", '{"text": "x"}\n{"text": "  "}\n', r"d.jsonl:2: text: empty"),
    ("e.jsonl", '{"text": "x"}\n{"text": "y"\n', r"e.jsonl:2: not valid JSON"),
    ("f.jsonl", '["text"]\n', r"f.jsonl:1: expected a JSON object, found list"),
    ("g.jsonl", '{"body": "x"}\n', r"g.jsonl:1: text: missing; a row needs"),
    ("h.csv", 'text,label\n"a b",x\n"c d"\n', r"h.csv:3: 1 values for 2 columns"),
    ("i.csv", 'text,label\n"a\nb",x\n"c",\n', r"i.csv:4: label: empty"),
    ("j.txt", "hello\n", r"unknown data format '.txt'"),
    ("k.jsonl", "\n\n", r"k.jsonl: no rows"),
])
def test_a_bad_row_is_named_by_file_line_and_field(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        D.read(path)


def test_split_is_seeded_disjoint_and_holds_out_the_share():
    rows = D.read(DATA / "instructions.jsonl").rows
    train, held = D.split(rows, 0.1, seed=3)
    assert (len(train), len(held)) == (36, 4)
    assert not {r.line for r in train} & {r.line for r in held}
    assert D.split(rows, 0.1, seed=3) == (train, held) and D.split(rows, 0.1, seed=4) != (train, held)
    with pytest.raises(UsageError, match="leaves no training rows"):
        D.split(rows[:1], 0.5, seed=0)


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch():
    a = D.epoch_order(20, seed=1, epoch=0)
    assert sorted(a) == list(range(20))
    assert a == D.epoch_order(20, seed=1, epoch=0) != D.epoch_order(20, seed=1, epoch=1)


def test_prompt_tokens_carry_no_loss_and_padding_is_masked():
    from tests.train.conftest import byte_tokenizer

    tok = byte_tokenizer()
    rows = [D.Row(1, {"prompt": "Q:", "completion": " ab"}), D.Row(2, {"prompt": "Q: x", "completion": " c"})]
    enc = D.encode(rows, tok, "causal-lm", [], max_length=64)
    # byte-level: "Q:" is 2 tokens, " ab" 3, then EOS (257)
    assert enc[0]["input_ids"][-1] == 257 and len(enc[0]["input_ids"]) == 6
    assert enc[0]["labels"] == [-100, -100] + enc[0]["input_ids"][2:]
    batch = D.collate(enc, pad_id=256)
    assert batch["input_ids"].shape == (2, 7) and batch["attention_mask"][0].tolist() == [1] * 6 + [0]
    assert batch["labels"][0, -1].item() == -100 and batch["input_ids"][0, -1].item() == 256


def test_bad_row_from_the_command_line_is_one_line_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "completion": "c"}\n{"prompt": "p"}\n')
    out = tmp_path / "out"
    result = run_cli("train", "lora", "--model", "smollm2", "--data", str(bad), "--out", str(out))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {bad}:2: completion: missing"
    assert not out.exists()
