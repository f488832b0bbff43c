"""BibTeX built from paper fields, and the fast index agreeing with the typed loader."""
from __future__ import annotations

import json
import sys
import subprocess

from peftkb.bibtex import cite_key, entry_type, to_bibtex
from peftkb.index import load_index, strip_none
from peftkb.loader import load_catalog
from peftkb.model import Paper


def paper(**kw) -> Paper:
    base = dict(title="LoRA: Low-Rank Adaptation of Large Language Models", authors=["Edward J. Hu", "Yelong Shen"],
                year=2022, venue="ICLR 2022", arxiv="2106.09685", url="https://openreview.net/forum?id=nZeVKeeFYf9")
    return Paper(**{**base, **kw})


def test_key_and_entry_type():
    assert cite_key(paper()) == "hu2022lora"
    assert entry_type(paper()) == "inproceedings"
    assert entry_type(paper(venue="Nature Machine Intelligence")) == "article"
    assert entry_type(paper(venue="arXiv preprint")) == "misc"
    assert cite_key(paper(authors=["Stanisław Jastrzębski"], title="The Ünïcode paper")) == "jastrzebski2022unicode"


def test_bibtex_fields_and_escaping():
    text = to_bibtex(paper(title="Fast & 100% {cheap} tuning_x", doi="10.1234/abc"))
    assert text.startswith("@inproceedings{hu2022fast,")
    assert r"Fast \& 100\% \{cheap\} tuning\_x" in text
    assert "author = {Edward J. Hu and Yelong Shen}" in text
    assert "booktitle = {ICLR 2022}" in text and "eprint = {2106.09685}" in text and "doi = {10.1234/abc}" in text
    assert text.count("{") == text.count("}")


def test_index_equals_typed_catalog(kb):
    typed = load_catalog(kb.root, use_cache=False)
    records = load_index(kb.root)  # cache miss: validates, writes the cache
    again = load_index(kb.root)  # cache hit
    expected = [m.model_dump(mode="json", by_alias=True, exclude_none=True) for m in typed.methods]
    assert [strip_none(m) for m in records.methods] == expected == [strip_none(m) for m in again.methods]
    assert records.methods[0].properties.mergeable in (True, False)


def test_cache_is_invalidated_when_a_file_changes(kb):
    load_catalog(kb.root)
    kb.edit("lora.yaml", "name: LoRA", "name: LoRA-renamed")
    assert next(m for m in load_index(kb.root).methods if m.id == "lora").name == "LoRA-renamed"


def test_cache_hit_imports_no_pydantic(kb):
    load_catalog(kb.root)  # warm the cache
    code = ("import sys, json; from peftkb.index import load_index; i = load_index(); "
            "print(json.dumps([len(i.methods), 'pydantic' in sys.modules, 'yaml' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PEFTKB_ROOT": str(kb.root), "PATH": ""})
    count, pydantic_loaded, yaml_loaded = json.loads(out.stdout)
    assert count == len(load_catalog(kb.root).methods) and not pydantic_loaded and not yaml_loaded
