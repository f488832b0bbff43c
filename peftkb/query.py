"""Lookups on a loaded catalog that need no graph library: by id or alias, by category prefix, by text.

Every function reads attributes only, so it serves both the typed catalog (`peftkb.loader`) and the
plain records of the fast index (`peftkb.index`).
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from peftkb.errors import NotFoundError, UsageError, did_you_mean

if TYPE_CHECKING:  # works on typed models and on the index's records alike; imports no pydantic
    from peftkb.model import Catalog, Category, Method


#: The relation kinds, in the order of the schema (peftkb.model holds the same tuples; a test keeps them equal).
#: Kept here so that the read commands need not import pydantic.
RELATION_KINDS = ("variant_of", "extends", "combines", "generalizes", "related_to")
#: The relations that say "this method comes after its target" (related_to carries no chronology).
LINEAGE_KINDS = ("variant_of", "extends", "combines", "generalizes")


def relation_edges(m: Method) -> list[tuple[str, str]]:
    """(relation kind, target id) pairs of a method, in a fixed order."""
    relations = m.relations
    return [(kind, target) for kind in RELATION_KINDS for target in (getattr(relations, kind, None) or [])]


#: The other taxonomies of `peftkb crosswalk`: scheme -> how to cite it (the schema's CROSSWALK_SCHEMES labels).
CROSSWALK_LABELS = {
    "han2024": "Han et al. 2024, arXiv 2403.14608",
    "lialin2023": "Lialin et al. 2023, arXiv 2303.15647",
    "ding2023": "Ding et al. 2023, Nature Machine Intelligence, arXiv 2203.06904",
    "peft_docs": "Hugging Face PEFT documentation",
}


def formulas(trainable_params) -> dict[str, str]:
    """The trainable-parameter formulas by scope (per_target, per_layer, total), those that are given."""
    return {scope: getattr(trainable_params, scope) for scope in ("per_target", "per_layer", "total")
            if getattr(trainable_params, scope, None)}


def depth(category: Category) -> int:
    return category.id.count("/")


def all_names(m: Method) -> list[str]:
    return [m.id, m.name, *m.aliases]


def find_method(catalog: Catalog, key: str) -> Method:
    """A method by id, name or alias, ignoring case; NotFoundError with suggestions otherwise."""
    folded = key.casefold()
    for m in catalog.methods:
        if any(n.casefold() == folded for n in all_names(m)):
            return m
    pool = [n for m in catalog.methods for n in all_names(m)]
    raise NotFoundError(f"no method '{key}'" + did_you_mean(key, pool))


def find_category(catalog: Catalog, key: str) -> Category:
    """A category by id, by its last path segment, or by name, ignoring case."""
    folded = key.casefold().strip("/")
    exact = [c for c in catalog.categories if c.id == folded or c.name.casefold() == folded]
    by_slug = [c for c in catalog.categories if c.id.rsplit("/", 1)[-1] == folded]
    hits = exact or by_slug
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise NotFoundError(f"category '{key}' is ambiguous: " + ", ".join(c.id for c in hits))
    raise NotFoundError(f"no category '{key}'" + did_you_mean(key, [c.id for c in catalog.categories]))


def subtree(catalog: Catalog, category_id: str) -> list[str]:
    """The category and every category below it (ids are paths, so this is a prefix match)."""
    return [c.id for c in catalog.categories if c.id == category_id or c.id.startswith(category_id + "/")]


def methods_in(catalog: Catalog, category_id: str) -> list[Method]:
    cats = set(subtree(catalog, category_id))
    return [m for m in catalog.methods if m.category in cats]


def ancestors(catalog: Catalog, category_id: str) -> list[Category]:
    """Root first, ending with the category itself."""
    by_id = {c.id: c for c in catalog.categories}
    parts = category_id.split("/")
    return [by_id["/".join(parts[: i + 1])] for i in range(len(parts)) if "/".join(parts[: i + 1]) in by_id]


_WORD = re.compile(r"[^\W_]+")  # letters and digits of any script: "Rücklé" is one word, not "r" and "ckl"
#: Bounds on one query, so that its cost is bounded too (a paper title is well inside both).
MAX_QUERY_CHARS = 300
MAX_QUERY_TERMS = 32


def _words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def search(catalog: Catalog, text: str) -> list[tuple[float, Method]]:
    """Rank methods for a free-text query; fields weigh name > alias > title > summary > authors.

    A query is at most MAX_QUERY_CHARS characters and MAX_QUERY_TERMS distinct words, and has at least
    one word (letters or digits); anything else is a UsageError, so the work per query is bounded.
    """
    if len(text) > MAX_QUERY_CHARS:
        raise UsageError(f"the query is {len(text):,} characters; the limit is {MAX_QUERY_CHARS}")
    terms = list(dict.fromkeys(_words(text)))  # distinct, in order
    if not terms:
        raise UsageError("the query has no words to search for (letters or digits)")
    if len(terms) > MAX_QUERY_TERMS:
        raise UsageError(f"the query has {len(terms)} distinct words; the limit is {MAX_QUERY_TERMS}")
    phrase = text.casefold().strip()
    results = []
    for m in catalog.methods:
        fields: list[tuple[float, Iterable[str]]] = [
            (10.0, [m.id, m.name]), (6.0, m.aliases + ([m.full_name] if m.full_name else [])),
            (3.0, [p.title for p in m.papers]), (2.0, [m.summary] + m.tags),
            (1.5, [a for p in m.papers for a in p.authors]),
        ]
        score = 0.0
        for weight, values in fields:
            for value in values:
                folded = value.casefold()
                if folded == phrase:
                    score += weight * 3
                elif phrase in folded:
                    score += weight * 5  # the whole phrase inside a field beats scattered words
                words = set(_words(value))
                score += weight * sum(1 for t in terms if t in words)
                score += weight * 0.3 * sum(1 for t in terms if t not in words and any(w.startswith(t) for w in words))
        if score > 0:
            results.append((round(score, 2), m))
    results.sort(key=lambda item: (-item[0], item[1].id))
    return results
