"""What the templates see: the catalog with its category tree and lineage indexed, display names, page paths."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from peftkb.model import RELATION_KINDS, Catalog, Category, Method
from peftkb.site.numbers import Numbers
from peftkb.site.snippets import Exports

if TYPE_CHECKING:
    from peftkb.site.evidence import Evidence

# -- presentation data ------------------------------------------------------------------------------
ROLE_NAMES = {"q": "query", "k": "key", "v": "value", "o": "attention output", "up": "FFN up",
              "gate": "FFN gate", "down": "FFN down"}
INSERTION_NAMES = {"attention": "attention", "ffn": "feed-forward", "embeddings": "embeddings",
                   "layernorm": "layer norm", "input": "input", "output": "output", "all": "all weights",
                   "cross-attention": "cross-attention"}
OVERHEAD_NAMES = {"none": "none", "none-when-merged": "none once merged",
                  "extra-modules": "extra modules in the forward pass",
                  "longer-sequence": "longer sequence (virtual tokens)", "extra-model": "an extra model",
                  "dequantization": "dequantising the frozen weights"}
FLAG_NAMES = {"changes_sequence_length": "Changes sequence length", "needs_quantized_base": "Needs a quantised base",
              "supports_multi_task": "Multi-task", "trains_base_weights": "Trains base weights"}
RELATION_NAMES = {"variant_of": "variant of", "extends": "extends", "combines": "combines",
                  "generalizes": "generalises", "related_to": "related to"}
INVERSE_RELATION_NAMES = {"variant_of": "has variant", "extends": "extended by", "combines": "combined in",
                          "generalizes": "generalised by", "related_to": "related to"}
SOURCE_KINDS = {"paper": "the paper", "authors-code": "the authors' code", "library": "a library"}
CONFIDENCE_TEXT = {
    "high": "confirmed from a rendering of the survey's taxonomy figure",
    "medium": "recalled from the survey's v1 figure and Section III, not checked against its text",
    "low": "uncertain: the survey may discuss the method elsewhere, or not at all",
    "not-in-survey": "not in the survey",
}
# colours of the top-level categories, also used by the timeline chart (CSS classes pk-c-<slug>)
CATEGORY_COLOURS = {"additive": "#1e88e5", "partial": "#2e7d32", "reparameterized": "#8e24aa",
                    "hybrid": "#ef6c00", "unified": "#c62828", "baseline": "#757575"}
EXTRA_COLOURS = ("#00897b", "#6d4c41", "#3949ab", "#ad1457", "#546e7a")


_ABBREVIATIONS = ("e.g.", "i.e.", "et al.", "etc.", "vs.", "cf.", "approx.", "fig.", "eq.", "sec.", "no.")


def first_sentence(text: str, limit: int = 180) -> str:
    """The first sentence: it ends at . ! or ? followed by a space or the end, outside parentheses and not
    after an abbreviation ("e.g.", "et al."); cut at a word boundary (with "…") only when over `limit`."""
    text = " ".join(text.split())
    depth = 0
    end = len(text)
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth = max(0, depth - 1)
        elif ch in ".!?" and depth == 0 and (i + 1 == len(text) or text[i + 1] == " "):
            head = text[: i + 1].lower()
            if ch == "." and any(head.endswith(" " + a) or head == a or head.endswith("(" + a) for a in _ABBREVIATIONS):
                continue
            end = i + 1
            break
    out = text[:end]
    if len(out) <= limit:
        return out
    cut = out[: limit - 1].rsplit(" ", 1)[0].rstrip(",;:(")
    return cut + "…"


# -- the model handed to the templates --------------------------------------------------------------
@dataclass
class SiteModel:
    catalog: Catalog
    root: Path
    categories: dict[str, Category] = field(default_factory=dict)
    children: dict[str | None, list[Category]] = field(default_factory=dict)
    methods: dict[str, Method] = field(default_factory=dict)
    numbers: Numbers = field(default_factory=Numbers)  # trainable counts and memory on popular models
    exports: Exports = field(default_factory=Exports)  # the peft / AdapterHub scripts of `peftkb export`

    def __post_init__(self) -> None:
        self.categories = {c.id: c for c in self.catalog.categories}
        for c in self.catalog.categories:
            self.children.setdefault(c.parent, []).append(c)
        self.methods = {m.id: m for m in self.catalog.methods}
        self._incoming: dict[str, list[tuple[str, str]]] = {}
        for m in self.catalog.methods:
            for kind, target in m.relations.edges():
                self._incoming.setdefault(target, []).append((kind, m.id))

    @cached_property
    def evidence(self) -> Evidence:
        """Measured runs per method, the Compare page's plots and the calculator check (loaded once)."""
        from peftkb.site import evidence

        return evidence.load(self.root, self.catalog)

    # categories
    @property
    def roots(self) -> list[Category]:
        return self.children.get(None, [])

    def top(self, category_id: str) -> Category:
        return self.categories.get(category_id.split("/")[0]) or self.categories[category_id]

    def ancestors(self, category_id: str) -> list[Category]:
        parts = category_id.split("/")
        return [self.categories[p] for p in ("/".join(parts[: i + 1]) for i in range(len(parts)))
                if p in self.categories]

    def subtree_methods(self, category_id: str) -> list[Method]:
        return sorted((m for m in self.catalog.methods
                       if m.category == category_id or m.category.startswith(category_id + "/")),
                      key=lambda m: (m.year, m.name.casefold()))

    def direct_methods(self, category_id: str) -> list[Method]:
        """Methods filed in this category itself, not in one of its subcategories."""
        return [m for m in self.subtree_methods(category_id) if m.category == category_id]

    def colour(self, category_id: str) -> str:
        slug = category_id.split("/")[0]
        if slug in CATEGORY_COLOURS:
            return CATEGORY_COLOURS[slug]
        others = [c.id for c in self.roots if c.id not in CATEGORY_COLOURS]
        return EXTRA_COLOURS[others.index(slug) % len(EXTRA_COLOURS)] if slug in others else EXTRA_COLOURS[0]

    # methods
    def sorted_methods(self) -> list[Method]:
        return sorted(self.catalog.methods, key=lambda m: m.name.casefold())

    def incoming(self, method_id: str) -> list[tuple[str, str]]:
        return sorted(self._incoming.get(method_id, []), key=lambda kv: (RELATION_KINDS.index(kv[0]), kv[1]))

    def survey_placed_here(self, category_id: str) -> list[Method]:
        """Methods the survey places in this category while the catalog files them elsewhere."""
        return [m for m in self.catalog.methods if m.survey.leaf == category_id and m.category != category_id]

    def reference_source(self, m: Method) -> str | None:
        ref = m.implementations.reference
        if not ref:
            return None
        path = self.root / ref
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None


# -- page paths -------------------------------------------------------------------------------------
def method_page(method_id: str) -> str:
    return f"methods/{method_id}.md"


def category_page(category_id: str) -> str:
    return f"taxonomy/{category_id}/index.md"


def _relative(from_page: str, target: str) -> str:
    """Relative URL from one docs-relative page to a docs-relative target (both with '/' separators)."""
    from_dir = from_page.split("/")[:-1]
    to = target.split("/")
    common = 0
    while common < len(from_dir) and common < len(to) - 1 and from_dir[common] == to[common]:
        common += 1
    parts = [".."] * (len(from_dir) - common) + to[common:]
    return quote("/".join(parts), safe="/#.-_~")
