"""Search keys: a method's name and aliases as tokens Material's search index ranks first when typed."""
from __future__ import annotations

import json
from typing import Any

from peftkb.model import Catalog, Method
from peftkb.site.model import method_page

SEARCH_PAD = "peftkbpad"  # fills every method's key list to one length; nobody searches for it


def search_key(text: str) -> str:
    """A name as one search token: NFKC (so ³ is 3), lower case, "+" spelt "plus", then letters and digits
    only ("LoRA-FA" -> "lorafa", "LoRA+" -> "loraplus")."""
    import unicodedata

    text = unicodedata.normalize("NFKC", text).lower().replace("+", "plus")
    return "".join(c for c in text if c.isalnum())


def search_keys(m: Method) -> list[str]:
    """The method's name and aliases as search tokens, name first, without repeats."""
    keys: list[str] = []
    for text in (m.name, *m.aliases):
        key = search_key(text)
        if key and key not in keys:
            keys.append(key)
    return keys


def search_front_matter(m: Method, width: int) -> dict[str, Any]:
    """Front matter that makes a typed method name find its page first in Material's search.

    Material's lunr index weighs `tags` 10^6 times the text, and the search box adds a trailing wildcard to
    every term, so "lora" also matches the keys "loramoe" and "lorafa" with the same weight. Among the
    names it matches, the typed one is the shortest, so the page boost halves with every character of the
    name's key (down to 1 at 12 characters). Every page's key list is padded to the same length `width`,
    so that BM25's length normalisation treats them alike. Tags are hidden in the results (peftkb.css).
    An exact alias (one page's key, but not its name's) is moved to the top in the browser (peftkb.js,
    with the key table from `search_key_table`).
    """
    keys = search_keys(m)
    name_len = min(len(keys[0]) if keys else 12, 12)
    return {"tags": keys + [SEARCH_PAD] * max(0, width - len(keys)),
            "search": {"boost": 2 ** (12 - name_len)}}


def search_key_table(catalog: Catalog) -> str:
    """`assets/search-keys.js`: every method's keys -> its page, for peftkb.js (a script, so it also loads
    from file://). A key two methods share goes to the one whose name it is."""
    table: dict[str, str] = {}
    for m in sorted(catalog.methods, key=lambda m: m.id):
        for i, key in enumerate(search_keys(m)):
            if i == 0 or key not in table:
                table[key] = method_page(m.id)[:-3] + ".html"
    return "window.peftkbSearchKeys = " + json.dumps(table, sort_keys=True) + ";\n"


def search_width(catalog: Catalog) -> int:
    """The longest key list of the catalog: every method page's list is padded to it."""
    return max((len(search_keys(m)) for m in catalog.methods), default=0)
