"""The one escaping layer of the site: catalog text -> markdown that shows it literally, in HTML too.

`md_text` turns every character markdown, its extensions or HTML could read as syntax into a numeric
character reference, so `{{ value }}` in a template shows catalog text as text (a summary holding
`<script>` or `[x](javascript:...)` renders literally). Text is escaped once: markup (from a helper, or
text already through here) passes unchanged. Attributes get HTML escaping only (`attr_text`), front-matter
titles a YAML string of HTML-escaped text (`front_title`). Code blocks, math and links are built by helpers
that return `Markup` after escaping for their own context. Only http(s) URLs are emitted.
"""
from __future__ import annotations

import html
import json
import re
from typing import Any
from urllib.parse import urlsplit

from jinja2 import TemplateError
from markupsafe import Markup, escape

# Every ASCII character that markdown, its extensions (tables, arithmatex, attr_list, abbr, admonitions,
# definition lists) or HTML could read as syntax. Written as numeric references they display unchanged.
_MD_SPECIAL = frozenset("\\`*_{}[]()#+-.!|<>&\"'~^=:$@%")


def md_text(value: Any) -> Markup:
    """Catalog text made safe for markdown *and* HTML: inline, whitespace collapsed, punctuation inert.

    Markup (from a helper, or text already passed through here) is returned as it is: text is escaped once.
    """
    if hasattr(value, "__html__"):
        return Markup(value)
    if isinstance(value, bool):
        value = "yes" if value else "no"
    text = " ".join(str(value).split())
    return Markup("".join(f"&#{ord(c)};" if c in _MD_SPECIAL else c for c in text))


_CODE_SPAN = re.compile(r"`([^`]+)`")


def prose(value: Any) -> Markup:
    """Catalog prose (summaries, notes, meanings): like md_text, but `code` spans, the one piece of markdown
    the catalog's authors write, are shown as code instead of as literal backticks."""
    if hasattr(value, "__html__"):
        return Markup(value)
    parts = _CODE_SPAN.split(" ".join(str(value).split()))
    return Markup("").join(Markup(f"<code>{md_text(part)}</code>") if i % 2 else Markup(_md_sep(part))
                           for i, part in enumerate(parts))


def _md_sep(sep: str) -> str:
    """A separator for join: escaped like md_text but with its spaces kept."""
    return "".join(f"&#{ord(c)};" if c in _MD_SPECIAL else c for c in sep)


def _finalize(value: Any) -> Any:
    """Applied to every `{{ }}`: plain values become md_text; Markup from helpers passes through."""
    if hasattr(value, "__html__"):
        return value
    if value is None:
        raise TemplateError("a template printed None; guard optional fields with {% if %}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Markup(str(value))  # digits, '.', '-': nothing markdown reads mid-line
    return md_text(value)


def attr_text(value: Any) -> Markup:
    """A plain value (or a list of them, space-separated) escaped for an HTML attribute, and nothing else.

    Attributes are never read by markdown, so they get HTML escaping only; markup already escaped for
    markdown would be escaped a second time, so it is refused.
    """
    if isinstance(value, (list, tuple)):
        return Markup(" ").join(attr_text(v) for v in value)
    if hasattr(value, "__html__"):
        raise TemplateError("|attr takes plain values, not markup (it would be escaped twice)")
    if isinstance(value, bool):
        value = "true" if value else "false"
    return Markup(escape(str(value)))


def front_title(text: str) -> Markup:
    """A page title for the front matter (a YAML string). mkdocs and Material print titles without escaping
    them, so it is HTML-escaped here, once; markdown never reads front matter."""
    return Markup(json.dumps(html.escape(" ".join(text.split()), quote=True)))


def safe_url(url: str | None) -> str | None:
    """The URL if it is an absolute http(s) URL, else None: nothing else is ever emitted as a link."""
    if not url:
        return None
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    return url.strip()


def ext_link(url: str | None, text: Any, cls: str = "") -> Markup:
    """An external link as inline HTML (works inside markdown, tables and raw HTML alike)."""
    good = safe_url(url)
    label = text if hasattr(text, "__html__") else md_text(text)
    if good is None:
        return Markup(label)
    klass = f' class="{escape(cls)}"' if cls else ""
    return Markup(f'<a href="{escape(good)}"{klass} rel="noopener">{label}</a>')


def fence(code: str, lang: str = "text", indent: int = 0, title: str | None = None) -> Markup:
    """A fenced code block whose fence is longer than any backtick run inside it (so it cannot close early)."""
    longest = max((len(m) for m in re.findall(r"`+", code)), default=0)
    ticks = "`" * max(3, longest + 1)
    head = ticks + lang
    if title:
        head += f' title="{title.replace(chr(34), "")}"'
    body = code.replace("\r\n", "\n").rstrip("\n")
    pad = " " * indent
    lines = [head, *body.split("\n"), ticks]
    return Markup("\n".join((pad + line) if line else "" for line in lines))


def mermaid_label(text: str) -> str:
    """A node label for mermaid: its entity codes for the characters its parser or HTML would read."""
    codes = {'"': "#quot;", "<": "#lt;", ">": "#gt;", "#": "#35;", "&": "#amp;", "`": "#96;"}
    return "".join(codes.get(c, c) for c in " ".join(text.split()))


def _latex_for_markdown(tex: str) -> str:
    # `|` would split a markdown table cell; \vert is the same glyph
    return tex.replace("|", r"\vert{}")


def math_md(tex: str, display: bool = False) -> Markup:
    """Math for markdown (pymdownx.arithmatex turns it into an element KaTeX renders)."""
    tex = _latex_for_markdown(tex)
    return Markup(f"$$\n{tex}\n$$" if display else f"${tex}$")


def math_html(tex: str) -> Markup:
    """Math inside raw HTML, in the form arithmatex itself produces."""
    return Markup(f'<span class="arithmatex">\\({escape(tex)}\\)</span>')
