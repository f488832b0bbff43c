"""BibTeX built from a paper's catalog fields (never stored, so it cannot drift from them)."""
from __future__ import annotations

import re
import unicodedata

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # works on typed papers and on the index's records alike
    from peftkb.model import Paper

_CONFERENCE_WORDS = ("conference", "proceedings", "workshop", "findings", "iclr", "icml", "neurips", "nips",
                     "acl", "emnlp", "naacl", "eacl", "coling", "aaai", "ijcai", "cvpr", "iccv", "eccv", "kdd",
                     "cikm", "sigir", "www", "interspeech", "icassp", "colm", "aistats", "uai", "mlsys")
_JOURNAL_WORDS = ("transactions", "journal", "nature", "tacl", "jmlr", "ai open", "letters", "magazine")
_ESCAPES = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "~": r"\textasciitilde{}",
            "^": r"\textasciicircum{}"}


def entry_type(paper: Paper) -> str:
    venue = (paper.venue or "").lower()
    if any(w in venue for w in _JOURNAL_WORDS):
        return "article"
    if any(re.search(rf"\b{w}\b", venue) for w in _CONFERENCE_WORDS):
        return "inproceedings"
    return "misc"


def _ascii(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def cite_key(paper: Paper) -> str:
    """`lastname` + year + first significant title word, e.g. hu2021lora."""
    last = re.sub(r"[^a-z]", "", _ascii(paper.authors[0].split()[-1]).lower()) or "anon"
    words = [w for w in re.findall(r"[a-z0-9]+", _ascii(paper.title).lower())
             if w not in {"a", "an", "the", "on", "of", "for", "to", "in", "and", "is", "are"}]
    return f"{last}{paper.year}{words[0] if words else ''}"


def escape(text: str) -> str:
    out = "".join(_ESCAPES.get(ch, ch) for ch in text)
    return out.replace("{", r"\{").replace("}", r"\}") if "{" in text or "}" in text else out


def to_bibtex(paper: Paper, key: str | None = None) -> str:
    kind = entry_type(paper)
    fields: list[tuple[str, str]] = [
        ("title", "{" + escape(paper.title) + "}"),  # double braces keep the capitalisation
        ("author", " and ".join(escape(a) for a in paper.authors)),
        ("year", str(paper.year)),
    ]
    if paper.venue:
        fields.append(({"article": "journal", "inproceedings": "booktitle"}.get(kind, "howpublished"),
                       escape(paper.venue)))
    if paper.arxiv:
        fields += [("eprint", paper.arxiv), ("archivePrefix", "arXiv")]
    if paper.doi:
        fields.append(("doi", paper.doi))
    if paper.url:
        fields.append(("url", paper.url))
    body = ",\n".join(f"  {name} = {{{value}}}" for name, value in fields)
    return f"@{kind}{{{key or cite_key(paper)},\n{body}\n}}"
