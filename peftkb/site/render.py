"""Catalog -> markdown pages (jinja2) and a static JSON API, then `mkdocs build --strict`.

Layout of the generated tree (site/docs/, wiped and regenerated on every build):

    index.md  taxonomy/index.md  taxonomy/<category id>/index.md  methods/index.md  methods/<id>.md
    comparison.md  timeline.md  survey.md  api.md
    api/methods.json  api/methods/<id>.json  api/taxonomy.json     (same data as the CLI's --format json)
    reference_impls/<file>.py                                       (copies, linked from method pages)
    assets/                                                          (site/assets: our CSS/JS, vendored libs)

Escaping: every template is autoescaped, and `{{ value }}` additionally turns markdown punctuation into
numeric character references, so catalog text is always shown as text, in HTML and in markdown alike
(a summary holding `<script>` or `[x](javascript:...)` renders literally). Code blocks, math and links are
built by helpers that return `Markup` after escaping for their own context. Only http(s) URLs are emitted.
"""
from __future__ import annotations

import ast
import html
import json
import logging
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateError, TemplateSyntaxError, pass_context
from markupsafe import Markup, escape

from peftkb.bibtex import cite_key, to_bibtex
from peftkb.errors import PeftkbError
from peftkb.formula import ARCH_SYMBOLS, Formula
from peftkb.model import CROSSWALK_SCHEMES, RELATION_KINDS, Catalog, Category, Method, TrainableParams

class SiteError(PeftkbError):
    """The site could not be built: a template error, a broken link, or mkdocs refusing the pages."""


# -- paths ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SitePaths:
    """Where the site's inputs and outputs live; everything defaults to <root>/site/..."""

    root: Path
    docs_dir: Path
    build_dir: Path
    templates_dir: Path
    assets_dir: Path
    config_file: Path

    @classmethod
    def for_root(cls, root: Path, *, site_dir: Path | None = None, docs_dir: Path | None = None,
                 build_dir: Path | None = None, templates_dir: Path | None = None) -> "SitePaths":
        site = site_dir or root / "site"
        return cls(root=root, docs_dir=(docs_dir or site / "docs").resolve(),
                   build_dir=(build_dir or site / "build").resolve(),
                   templates_dir=(templates_dir or site / "templates").resolve(),
                   assets_dir=(site / "assets").resolve(), config_file=(site / "mkdocs.yml").resolve())


# -- escaping helpers -------------------------------------------------------------------------------
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


# -- presentation data ------------------------------------------------------------------------------
ROLE_NAMES = {"q": "query", "k": "key", "v": "value", "o": "attention output", "up": "FFN up",
              "gate": "FFN gate", "down": "FFN down"}
ROLE_MODULES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "up": "up_proj",
                "gate": "gate_proj", "down": "down_proj"}
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

# Catalog hyperparameter name -> keyword of the peft config class, for the snippet on method pages.
# Only names listed here are emitted; tests check each keyword against the installed peft.
PEFT_KWARGS: dict[str, dict[str, str]] = {
    "LoraConfig": {"r": "r", "alpha": "lora_alpha", "dropout": "lora_dropout", "target_modules": "target_modules"},
    "AdaLoraConfig": {"init_r": "init_r", "target_r": "target_r", "alpha": "lora_alpha", "dropout": "lora_dropout",
                      "beta1": "beta1", "beta2": "beta2", "orth_reg_weight": "orth_reg_weight",
                      "tinit": "tinit", "tfinal": "tfinal", "delta_t": "deltaT", "total_step": "total_step",
                      "target_modules": "target_modules"},
    "IA3Config": {"target_modules": "target_modules"},
    "PrefixTuningConfig": {"n_virtual_tokens": "num_virtual_tokens", "prefix_projection": "prefix_projection",
                           "projection_hidden": "encoder_hidden_size"},
    "PromptTuningConfig": {"n_virtual_tokens": "num_virtual_tokens"},
    "PromptEncoderConfig": {"n_virtual_tokens": "num_virtual_tokens", "encoder_hidden": "encoder_hidden_size"},
    "LoHaConfig": {"r": "r", "alpha": "alpha", "target_modules": "target_modules"},
    "LoKrConfig": {"r": "r", "alpha": "alpha", "target_modules": "target_modules"},
    "VeraConfig": {"r": "r", "dropout": "vera_dropout", "d_initial": "d_initial", "target_modules": "target_modules"},
    "OFTConfig": {"r": "r", "block_size": "oft_block_size", "target_modules": "target_modules"},
    "BOFTConfig": {"block_size": "boft_block_size", "block_num": "boft_block_num",
                   "n_butterfly_factor": "boft_n_butterfly_factor", "dropout": "boft_dropout",
                   "target_modules": "target_modules"},
    "LNTuningConfig": {"target_modules": "target_modules"},
    "FourierFTConfig": {"n_frequency": "n_frequency", "scaling": "scaling", "target_modules": "target_modules"},
    "HRAConfig": {"r": "r", "target_modules": "target_modules"},
    "VBLoRAConfig": {"r": "r", "num_vectors": "num_vectors", "vector_length": "vector_length", "topk": "topk",
                     "target_modules": "target_modules"},
    "AdaptionPromptConfig": {"adapter_len": "adapter_len", "adapter_layers": "adapter_layers"},
}
# values a config needs that are not method hyperparameters: (keyword, value, comment)
PEFT_REQUIRED: dict[str, list[tuple[str, str, str]]] = {
    "AdaLoraConfig": [("total_step", "1000", "number of training steps; AdaLoRA schedules its budget over them")],
}


def _py_literal(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # a valid Python string literal
    if isinstance(value, list):
        return "[" + ", ".join(_py_literal(v) for v in value) + "]"
    return repr(value)


def _short(text: str, limit: int = 48) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "…"


def peft_snippet(m: Method) -> str | None:
    """A `LoraConfig(...)`-style snippet with the catalog defaults, or None when peft has no such method."""
    impl = m.implementations.peft
    if impl is None:
        return None
    config = impl.config or ""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", config):
        config = ""
    lines = []
    option = impl.option or ""
    option_kwarg = re.fullmatch(r"([a-z_][a-z0-9_]*)\s*=\s*(True|False|[0-9.]+|\"[^\"]*\"|'[^']*')", option)
    if not config:
        lines.append(f"# peft type {impl.peft_type}; see the peft documentation for its config class")
        return "\n".join(lines)
    kwargs: list[tuple[str, str, str]] = []
    mapping = PEFT_KWARGS.get(config, {})
    for h in m.hyperparameters:
        kw = mapping.get(h.name)
        if kw is None or h.default is None:
            continue
        value = h.default
        if h.name == "target_modules" and isinstance(value, list):
            value = [ROLE_MODULES.get(v, v) for v in value]
        kwargs.append((kw, _py_literal(value), _short(h.meaning)))
    if config == "IA3Config":  # IA3 needs to know which targets are feed-forward (scaled on their input)
        targets = next((h.default for h in m.hyperparameters if h.name == "target_modules"), None) or []
        ff = [ROLE_MODULES.get(t, t) for t in targets if t in ("up", "gate", "down")]
        if ff:
            kwargs.append(("feedforward_modules", _py_literal(ff), "targets scaled on their input"))
    have = {k for k, _, _ in kwargs}
    kwargs += [item for item in PEFT_REQUIRED.get(config, []) if item[0] not in have]
    if option_kwarg and option_kwarg.group(1) not in have:
        kwargs.append((option_kwarg.group(1), option_kwarg.group(2), "turns this method on"))
    kwargs.insert(0, ("task_type", '"CAUSAL_LM"', "or SEQ_2_SEQ_LM, SEQ_CLS, ..."))
    unmapped = [h.name for h in m.hyperparameters if h.name not in mapping and h.default is not None]
    lines.append(f"from peft import {config}, get_peft_model")
    lines.append("")
    if option and not option_kwarg:
        lines.append("# " + " ".join(option.split()))
    lines.append(f"config = {config}(")
    width = max((len(f"    {k}={v},") for k, v, _ in kwargs), default=0)
    for k, v, comment in kwargs:
        text = f"    {k}={v},"
        lines.append(f"{text.ljust(width)}  # {' '.join(comment.split())}" if comment else text)
    lines.append(")")
    if unmapped:
        lines.append(f"# not set above (no known {config} keyword): {', '.join(unmapped)}")
    lines.append("model = get_peft_model(model, config)  # model: a transformers model")
    if any(k == "target_modules" for k, _, _ in kwargs):
        lines.insert(2, "# module names as in LLaMA-style models; use your architecture's names")
    return "\n".join(lines)


def adapters_snippet(m: Method) -> str | None:
    if not m.implementations.adapters:
        return None
    lines = ["import adapters", "", "adapters.init(model)  # model: a transformers model"]
    for a in m.implementations.adapters:
        name = re.sub(r"[^a-z0-9_]", "_", m.id.lower())
        lines.append(f"model.add_adapter({json.dumps(name)}, config={json.dumps(a.config)})")
    lines.append(f"model.train_adapter({json.dumps(re.sub(r'[^a-z0-9_]', '_', m.id.lower()))})"
                 "  # freezes the model, trains the adapter")
    return "\n".join(lines)


def _brace_group(tex: str, start: int) -> int:
    """Index just past the {...} group opening at tex[start]."""
    depth = 0
    for i in range(start, len(tex)):
        if tex[i] == "{":
            depth += 1
        elif tex[i] == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    raise ValueError("unbalanced braces")


def formula_latex(source: str) -> str:
    """LaTeX of a catalog formula, with `x // 1` (round down to a whole count) shown as ⌊x⌋, not ⌊x/1⌋."""
    tex = Formula.parse(source).latex()
    head = r"\left\lfloor \frac{"
    out, at = [], 0
    while (i := tex.find(head, at)) >= 0:
        num_end = _brace_group(tex, i + len(head) - 1)
        tail = "{1} \\right\\rfloor"
        if tex.startswith(tail, num_end):
            out.append(tex[at:i] + r"\left\lfloor " + tex[i + len(head):num_end - 1] + r" \right\rfloor")
            at = num_end + len(tail)
        else:
            out.append(tex[at:i + len(head)])
            at = i + len(head)
    return "".join(out) + tex[at:]


def _needs_parens(source: str) -> bool:
    tree = Formula.parse(source).tree
    return (isinstance(tree, ast.BinOp) and isinstance(tree.op, (ast.Add, ast.Sub))) or isinstance(tree, ast.UnaryOp)


def _wrap(source: str) -> str:
    tex = formula_latex(source)
    return rf"\left({tex}\right)" if _needs_parens(source) else tex


def count_latex(tp: TrainableParams) -> str:
    """The whole trainable-parameter count, N = L·Σ_targets f + L·g + h, as LaTeX."""
    parts = []
    if tp.per_target:
        roles = r",\,".join(rf"\text{{{re.sub(r'[^a-z]', '', t)}}}" for t in tp.targets)
        parts.append(rf"L \sum_{{t \in \{{{roles}\}}}} {_wrap(tp.per_target)}")
    if tp.per_layer:
        parts.append(rf"L \cdot {_wrap(tp.per_layer)}")
    if tp.total:
        parts.append(formula_latex(tp.total))
    return " + ".join(parts)


DISPLAY_WIDTH = 110  # characters of LaTeX source above which a displayed count is broken into lines


def _top_terms(source: str) -> list[str]:
    """The formula's top-level terms as sources, each with its sign: "a - b + c" -> ["a", "- b", "+ c"]."""
    tree = Formula.parse(source).tree
    terms: list[str] = []

    def walk(node: ast.expr, sign: str) -> None:
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
            walk(node.left, sign)
            right_sign = "+" if isinstance(node.op, ast.Add) else "-"
            if isinstance(node.right, ast.BinOp) and isinstance(node.right.op, (ast.Add, ast.Sub)):
                terms.append(f"{right_sign} ({ast.unparse(node.right)})")
            else:
                terms.append(f"{right_sign} {ast.unparse(node.right)}")
        else:
            terms.append(ast.unparse(node))

    walk(tree, "+")
    return terms


def display_count_latex(tp: TrainableParams) -> str:
    """`N = ...` for a method page: one line, or an aligned block with one top-level term per line when the
    formula is too wide for the column (X-LoRA's total, for one)."""
    flat = count_latex(tp)
    if len(flat) <= DISPLAY_WIDTH or tp.per_target or tp.per_layer or not tp.total:
        return "N = " + flat
    lines = []
    for term in _top_terms(tp.total):
        sign, body = (term[0], term[2:]) if term[:2] in ("+ ", "- ") else ("", term)
        lead = f"{sign} " if sign else ""
        tex = formula_latex(body)
        node = Formula.parse(body).tree
        if (len(tex) > DISPLAY_WIDTH * 0.7 and isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult)
                and isinstance(node.right, ast.BinOp) and isinstance(node.right.op, (ast.Add, ast.Sub))):
            # a * (b + c + d): the factor, then one term of the bracket per line
            inner = [formula_latex(t) if t[:2] not in ("+ ", "- ") else f"{t[0]} {formula_latex(t[2:])}"
                     for t in _top_terms(ast.unparse(node.right))]
            lines.append(lead + _wrap(ast.unparse(node.left)) + r" \cdot \Big(" + inner[0])
            lines += [r"\quad " + t for t in inner[1:-1]]
            lines.append(r"\quad " + inner[-1] + r" \Big)")
        else:
            lines.append(lead + tex)
    return r"\begin{aligned} N = {} & " + r" \\ & ".join(lines) + r" \end{aligned}"


def symbol_rows(m: Method) -> list[dict[str, Any]]:
    """Every symbol of the method's formulas, with its LaTeX, its name in the data and its meaning."""
    tp = m.trainable_params
    if tp is None:
        return []
    used: set[str] = set()
    for source in tp.formulas().values():
        used |= Formula.parse(source).symbols()
    if tp.per_target or tp.per_layer:
        used.add("n_layers")
    hyper = {h.name: h.meaning for h in m.hyperparameters}
    rows = []
    for sym in sorted(used, key=lambda s: (s not in hyper, s)):
        meaning = hyper.get(sym) or ARCH_SYMBOLS.get(sym, "")
        if sym == "n_layers":
            meaning = ARCH_SYMBOLS["n_layers"]
        rows.append({"tex": Formula.parse(sym).latex(), "name": sym, "meaning": meaning,
                     "kind": "hyperparameter" if sym in hyper else "architecture"})
    return rows


# -- search ---------------------------------------------------------------------------------------
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

    def __post_init__(self) -> None:
        self.categories = {c.id: c for c in self.catalog.categories}
        for c in self.catalog.categories:
            self.children.setdefault(c.parent, []).append(c)
        self.methods = {m.id: m for m in self.catalog.methods}
        self._incoming: dict[str, list[tuple[str, str]]] = {}
        for m in self.catalog.methods:
            for kind, target in m.relations.edges():
                self._incoming.setdefault(target, []).append((kind, m.id))

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
    @property
    def search_width(self) -> int:
        return max((len(search_keys(m)) for m in self.catalog.methods), default=0)

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


# -- rendering --------------------------------------------------------------------------------------
def make_environment(templates_dir: Path) -> Environment:
    env = Environment(loader=FileSystemLoader(str(templates_dir)), autoescape=True, undefined=StrictUndefined,
                      finalize=_finalize, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)

    @pass_context
    def md_url(ctx: Any, target: str) -> Markup:
        """Link target for markdown links: mkdocs checks it and rewrites .md to .html."""
        return Markup(_relative(ctx["page_path"], target))

    @pass_context
    def html_url(ctx: Any, target: str) -> Markup:
        """Link target for raw HTML (not seen by mkdocs): the final .html URL."""
        if target.endswith(".md"):
            target = target[:-3] + ".html"
        return Markup(escape(_relative(ctx["page_path"], target)))

    @pass_context
    def mlink(ctx: Any, m: Method, html_mode: bool = False) -> Markup:
        if html_mode:
            return Markup(f'<a href="{html_url(ctx, method_page(m.id))}">{md_text(m.name)}</a>')
        return Markup(f"[{md_text(m.name)}]({md_url(ctx, method_page(m.id))})")

    @pass_context
    def clink(ctx: Any, c: Category, html_mode: bool = False, label: str | None = None) -> Markup:
        text = md_text(label if label is not None else c.name)
        if html_mode:
            return Markup(f'<a href="{html_url(ctx, category_page(c.id))}">{text}</a>')
        return Markup(f"[{text}]({md_url(ctx, category_page(c.id))})")

    env.globals.update(md_url=md_url, html_url=html_url, mlink=mlink, clink=clink, ext_link=ext_link, fence=fence,
                       math_md=math_md, math_html=math_html, count_latex=count_latex, display_count_latex=display_count_latex, symbol_rows=symbol_rows,
                       peft_snippet=peft_snippet, adapters_snippet=adapters_snippet, to_bibtex=to_bibtex,
                       cite_key=cite_key, first_sentence=first_sentence, mermaid_label=mermaid_label,
                       latex=formula_latex, ROLE_NAMES=ROLE_NAMES,
                       INSERTION_NAMES=INSERTION_NAMES, OVERHEAD_NAMES=OVERHEAD_NAMES, FLAG_NAMES=FLAG_NAMES,
                       RELATION_NAMES=RELATION_NAMES, INVERSE_RELATION_NAMES=INVERSE_RELATION_NAMES,
                       CONFIDENCE_TEXT=CONFIDENCE_TEXT, CROSSWALK_SCHEMES=CROSSWALK_SCHEMES,
                       RELATION_KINDS=RELATION_KINDS)
    env.globals["sp"] = lambda n: Markup(" " * int(n))
    env.globals["front_title"] = front_title
    env.globals["search_front_matter"] = lambda m, width: Markup(
        "\n".join(f"{k}: {json.dumps(v)}" for k, v in search_front_matter(m, width).items()))
    env.filters["md"] = md_text
    env.filters["prose"] = prose
    # jinja's own join returns HTML-escaped Markup that would skip the markdown escaping: replace it
    env.filters["join"] = lambda items, sep="": Markup(_md_sep(sep)).join(
        v if hasattr(v, "__html__") else md_text(v) for v in items)
    env.filters["attr"] = attr_text
    env.filters["code"] = lambda v: Markup(f"<code>{md_text(v)}</code>")
    return env


def method_record(m: Method) -> dict[str, Any]:
    """Exactly what `peftkb show ID --format json` prints for a method."""
    return m.model_dump(mode="json", by_alias=True, exclude_none=True)


def taxonomy_record(catalog: Catalog) -> list[dict[str, Any]]:
    """Exactly what `peftkb tree --format json` prints: the category tree with subtree method counts."""
    def count(cid: str) -> int:
        return sum(1 for m in catalog.methods if m.category == cid or m.category.startswith(cid + "/"))

    def node(parent: str | None) -> list[dict[str, Any]]:
        return [{"id": c.id, "name": c.name, "definition": c.definition, "methods": count(c.id),
                 "children": node(c.id)} for c in catalog.categories if c.parent == parent]

    return node(None)


def _json(payload: Any) -> str:
    # the same serialisation as the CLI's output layer
    return json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"


@dataclass
class RenderResult:
    pages: list[str]
    nav: list[Any]
    files: int


def _nav_title(text: str) -> str:
    # mkdocs puts nav titles into HTML without escaping them
    return html.escape(" ".join(text.split()), quote=True)


def build_nav(model: SiteModel) -> list[Any]:
    def cat_nav(parent: str | None) -> list[Any]:
        items = []
        for c in model.children.get(parent, []):
            if model.children.get(c.id):
                items.append({_nav_title(c.name): [category_page(c.id), *cat_nav(c.id)]})
            else:
                items.append({_nav_title(c.name): category_page(c.id)})
        return items

    method_groups = []
    for top in model.roots:
        ms = sorted(model.subtree_methods(top.id), key=lambda m: m.name.casefold())
        if ms:
            method_groups.append({_nav_title(top.name): [{_nav_title(m.name): method_page(m.id)} for m in ms]})
    return [
        {"Home": "index.md"},
        {"Taxonomy": ["taxonomy/index.md", *cat_nav(None)]},
        {"Methods": ["methods/index.md", *method_groups]},
        {"Compare": "comparison.md"},
        {"Timeline": "timeline.md"},
        {"Survey": "survey.md"},
        {"Assessment": "assessment.md"},
        {"JSON API": "api.md"},
    ]


def _render(env: Environment, template: str, page_path: str, **context: Any) -> str:
    try:
        return env.get_template(template).render(page_path=page_path, **context)
    except TemplateSyntaxError as exc:
        raise SiteError(f"{exc.filename or exc.name or template}:{exc.lineno}: template syntax error: {exc.message}") from None
    except TemplateError as exc:
        line = _template_line(exc, template)
        raise SiteError(f"{line}: cannot render {page_path}: {exc}") from None


def _template_line(exc: BaseException, template: str) -> str:
    """file:line of the innermost template frame of a rendering error (jinja keeps them in the traceback)."""
    tb = exc.__traceback__
    where = f"site/templates/{template}"
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if name.endswith(".j2"):
            where = f"{Path(name).name}:{tb.tb_lineno}"
            where = f"site/templates/{where}"
        tb = tb.tb_next
    return where


def taxonomy_mermaid(model: SiteModel) -> str:
    """The survey's category tree as a left-to-right mermaid flowchart, coloured by top-level category.

    Two levels of boxes: a subcategory's own subcategories are lines inside its box (a third column of
    boxes made mermaid route edges through other boxes). Methods filed directly under a category get a
    dashed box of their own, so every box's count is the sum of its children's.
    """
    def node_id(cid: str) -> str:
        return "c_" + re.sub(r"[^a-z0-9]", "_", cid)

    def label(c: Category) -> str:
        return mermaid_label(f"{c.name} · {len(model.subtree_methods(c.id))}")

    lines = ["graph LR", '  root(["PEFT methods"])']
    styles: list[str] = []
    for top in model.roots:
        if not top.survey:
            continue
        colour = model.colour(top.id)
        lines.append(f'  {node_id(top.id)}(["{label(top)}"])')
        lines.append(f"  root --> {node_id(top.id)}")
        # translucent fills: the label colour comes from the light or dark theme, so both stay readable
        styles.append(f"  style {node_id(top.id)} fill:{colour}40,stroke:{colour},stroke-width:3px")
        for c in model.children.get(top.id, []):
            inner = "".join(f"<br/><small>{label(g)}</small>" for g in model.children.get(c.id, []))
            lines.append(f'  {node_id(c.id)}["{label(c)}{inner}"]')
            lines.append(f"  {node_id(top.id)} --> {node_id(c.id)}")
            styles.append(f"  style {node_id(c.id)} fill:{colour}14,stroke:{colour},stroke-width:1.5px")
        direct = model.direct_methods(top.id)
        if direct and model.children.get(top.id):
            nid = node_id(top.id) + "_direct"
            lines.append(f'  {nid}["{mermaid_label(f"filed directly · {len(direct)}")}"]')
            lines.append(f"  {node_id(top.id)} -.-> {nid}")
            styles.append(f"  style {nid} fill:none,stroke:{colour},stroke-width:1px,stroke-dasharray:4 3")
    return "\n".join(lines + styles)


def timeline_data(model: SiteModel) -> dict[str, Any]:
    """Methods per year, stacked by top-level category, laid out as an SVG bar chart."""
    methods = [m for m in model.catalog.methods if m.kind == "method"]
    if not methods:
        return {"years": [], "bars": [], "width": 0, "height": 0, "ticks": [], "legend": []}
    years = list(range(min(m.year for m in methods), max(m.year for m in methods) + 1))
    tops = [c for c in model.roots if any(model.top(m.category).id == c.id for m in methods)]
    counts = {(y, t.id): 0 for y in years for t in tops}
    for m in methods:
        counts[(m.year, model.top(m.category).id)] += 1
    peak = max(sum(counts[(y, t.id)] for t in tops) for y in years)
    step = 1 if peak <= 8 else 2 if peak <= 16 else 5 if peak <= 40 else 10
    top_value = -(-peak // step) * step
    left, right, top_pad, bottom = 44, 16, 16, 40
    plot_h = 240
    slot = max(34, min(96, 760 // max(1, len(years))))
    width = left + right + slot * len(years)
    height = top_pad + plot_h + bottom
    bar_w = slot * 0.62
    bars = []
    for i, y in enumerate(years):
        x = left + i * slot + (slot - bar_w) / 2
        base = top_pad + plot_h
        total = 0
        for t in tops:
            n = counts[(y, t.id)]
            if not n:
                continue
            h = plot_h * n / top_value
            base -= h
            total += n
            names = ", ".join(m.name for m in methods if m.year == y and model.top(m.category).id == t.id)
            bars.append({"x": round(x, 1), "y": round(base, 1), "w": round(bar_w, 1), "h": round(h, 1),
                         "colour": model.colour(t.id), "slug": t.slug,
                         "title": f"{y} · {t.name}: {n} ({names})"})
        bars.append({"label": str(total) if total else "", "x": round(x + bar_w / 2, 1), "y": round(base - 5, 1)})
    ticks = [{"value": v, "y": round(top_pad + plot_h - plot_h * v / top_value, 1)}
             for v in range(0, top_value + 1, step)]
    labels = [{"text": str(y), "x": round(left + i * slot + slot / 2, 1), "y": top_pad + plot_h + 20}
              for i, y in enumerate(years)]
    legend = [{"name": t.name, "colour": model.colour(t.id), "category": t,
               "count": sum(counts[(y, t.id)] for y in years)} for t in tops]
    return {"years": years, "bars": bars, "width": width, "height": height, "ticks": ticks, "labels": labels,
            "legend": legend, "left": left, "right": width - right, "plot_bottom": top_pad + plot_h,
            "by_year": {y: sorted((m for m in methods if m.year == y), key=lambda m: m.name.casefold())
                        for y in years}}


def render_docs(catalog: Catalog, paths: SitePaths) -> RenderResult:
    """Write the markdown pages, the JSON API and the assets into paths.docs_dir (wiped first)."""
    if not paths.templates_dir.is_dir():
        raise SiteError(f"no templates folder at {paths.templates_dir}")
    env = make_environment(paths.templates_dir)
    model = SiteModel(catalog=catalog, root=paths.root)
    out: dict[str, str] = {}

    common = {"model": model, "catalog": catalog}
    out["index.md"] = _render(env, "home.md.j2", "index.md", **common)
    out["taxonomy/index.md"] = _render(env, "taxonomy.md.j2", "taxonomy/index.md",
                                       taxonomy_mermaid=taxonomy_mermaid(model), **common)
    for c in catalog.categories:
        page = category_page(c.id)
        out[page] = _render(env, "category.md.j2", page, category=c, **common)
    out["methods/index.md"] = _render(env, "methods.md.j2", "methods/index.md", **common)
    graph = _graph(catalog)
    for m in catalog.methods:
        page = method_page(m.id)
        out[page] = _render(env, "method.md.j2", page, m=m, lineage=_lineage(graph, m, model), **common)
    out["comparison.md"] = _render(env, "comparison.md.j2", "comparison.md", **common)
    out["timeline.md"] = _render(env, "timeline.md.j2", "timeline.md", chart=timeline_data(model), **common)
    out["survey.md"] = _render(env, "survey.md.j2", "survey.md", **common)
    from peftkb.site import assessment

    bench = assessment.load(paths.root)
    out["assessment.md"] = _render(env, "assessment.md.j2", "assessment.md", a=bench, **common)
    if bench is not None:
        out.update(bench.plots)
    example = model.methods.get("lora") or (catalog.methods[0] if catalog.methods else None)
    out["api.md"] = _render(env, "api.md.j2", "api.md", example=example, **common)

    # the static JSON API: the same records as the CLI's --format json
    out["api/methods.json"] = _json([method_record(m) for m in sorted(catalog.methods, key=lambda m: m.id)])
    for m in catalog.methods:
        out[f"api/methods/{m.id}.json"] = _json(method_record(m))
    out["api/taxonomy.json"] = _json(taxonomy_record(catalog))
    out["assets/search-keys.js"] = search_key_table(catalog)
    for m in catalog.methods:
        source = model.reference_source(m)
        if source is not None and m.implementations.reference:
            out[m.implementations.reference] = source

    _write_tree(paths.docs_dir, out, paths.assets_dir)
    pages = sorted(p for p in out if p.endswith(".md"))
    return RenderResult(pages=pages, nav=build_nav(model), files=len(out))


def _graph(catalog: Catalog) -> Any:
    from peftkb.graph import KnowledgeGraph  # networkx: only when rendering

    return KnowledgeGraph(catalog)


MAX_LINEAGE_NODES = 20  # above this a lineage diagram is unreadable; the page's table lists the methods


def _lineage(graph: Any, m: Method, model: SiteModel) -> dict[str, Any]:
    from peftkb.graph import to_mermaid

    edges = graph.neighbourhood(m.id)
    names = {x.id: mermaid_label(x.name) for x in model.catalog.methods}
    nodes = len({e.source for e in edges} | {e.target for e in edges})
    diagram = ""
    if edges and nodes <= MAX_LINEAGE_NODES:
        diagram = to_mermaid(edges, names, focus=m.id)
        if nodes > 8:  # many siblings side by side get tiny: stack them instead
            diagram = diagram.replace("graph BT", "graph RL", 1)
    return {"edges": edges, "mermaid": diagram, "nodes": nodes,
            "builds_on": graph.builds_on(m.id), "built_on": graph.built_on(m.id)}



def _write_tree(docs_dir: Path, files: dict[str, str], assets_dir: Path) -> None:
    """Replace docs_dir with exactly `files` plus the assets, touching only files whose content changed.

    Unchanged files keep their mtime, so a running `mkdocs serve` rebuilds only when something changed.
    """
    wanted: dict[Path, bytes] = {docs_dir / rel: text.encode("utf-8") for rel, text in files.items()}
    if assets_dir.is_dir():
        for src in sorted(assets_dir.rglob("*")):
            if src.is_file() and src.suffix != ".md":  # a notes file is not a page
                wanted[docs_dir / "assets" / src.relative_to(assets_dir)] = src.read_bytes()
    docs_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(docs_dir.rglob("*"), reverse=True):  # children before their folders
        if path.is_file() or path.is_symlink():
            if path not in wanted:
                path.unlink()
        elif path.is_dir() and not any(w.is_relative_to(path) for w in wanted):
            shutil.rmtree(path)
    for path, data in wanted.items():
        try:
            if path.is_file() and path.read_bytes() == data:
                continue
        except OSError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


# -- build ------------------------------------------------------------------------------------------
@dataclass
class BuildReport:
    pages: int
    files: int
    seconds: float
    build_dir: Path
    links_checked: int


def mkdocs_config(paths: SitePaths, nav: list[Any], **overrides: Any) -> Any:
    from mkdocs.config import load_config

    return load_config(config_file=str(paths.config_file), docs_dir=str(paths.docs_dir),
                       site_dir=str(paths.build_dir), nav=nav, strict=True, **overrides)


class _StderrHandler(logging.Handler):
    """mkdocs' warnings and errors, printed as `mkdocs: WARNING: ...` lines."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(f"mkdocs: {record.levelname}: {record.getMessage()}\n")
        except Exception:  # logging must never raise
            pass


def build_site(root: Path | None = None, *, site_dir: Path | None = None, docs_dir: Path | None = None,
               build_dir: Path | None = None, templates_dir: Path | None = None, catalog: Catalog | None = None,
               verbose: bool = False) -> BuildReport:
    """Render site/docs from the catalog, run `mkdocs build --strict`, then check every link of the result.

    `root` is the knowledge base (catalog, taxonomy, reference_impls); `site_dir` holds mkdocs.yml, the
    templates and assets (default <root>/site); docs_dir and build_dir default to folders inside it.
    """
    from peftkb.loader import find_root, load_catalog

    started = time.perf_counter()
    root = (root or find_root()).resolve()
    paths = SitePaths.for_root(root, site_dir=site_dir, docs_dir=docs_dir, build_dir=build_dir,
                               templates_dir=templates_dir)
    if not paths.config_file.is_file():
        raise SiteError(f"no mkdocs configuration at {paths.config_file}")
    catalog = catalog or load_catalog(root)
    result = render_docs(catalog, paths)
    _run_mkdocs(paths, result.nav, verbose=verbose)
    problems, checked = check_site(paths.build_dir)
    if problems:
        shown = "\n".join(f"  {p}" for p in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise SiteError(f"the built site has {len(problems)} broken or off-site link(s):\n{shown}{more}")
    return BuildReport(pages=len(result.pages), files=result.files, seconds=time.perf_counter() - started,
                       build_dir=paths.build_dir, links_checked=checked)


def _run_mkdocs(paths: SitePaths, nav: list[Any], verbose: bool = False) -> None:
    from mkdocs.commands.build import build
    from mkdocs.exceptions import Abort, ConfigurationError, MkDocsException

    logger = logging.getLogger("mkdocs")
    handler = _StderrHandler(level=logging.INFO if verbose else logging.WARNING)
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    try:
        try:
            cfg = mkdocs_config(paths, nav)
        except ConfigurationError as exc:
            raise SiteError(f"{paths.config_file}: invalid mkdocs configuration: {exc}") from None
        cfg.plugins.on_startup(command="build", dirty=False)
        try:
            build(cfg)
        finally:
            cfg.plugins.on_shutdown()
    except Abort as exc:
        raise SiteError(f"mkdocs build --strict failed ({exc}); see the mkdocs warnings above") from None
    except MkDocsException as exc:
        raise SiteError(f"mkdocs failed: {exc}") from None
    except TemplateError as exc:  # an error in site/overrides/*.html
        raise SiteError(f"theme template error: {exc}") from None
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


# -- link check of the built site -------------------------------------------------------------------
_TAG_RE = re.compile(r"<(a|link|script|img|iframe|source|embed|video|audio|form|use|image)\b([^>]*)>", re.I)
_ATTR_RE = re.compile(r"""([\w:-]+)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""")
_ID_RE = re.compile(r"""\s(?:id|name)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""")
_LINK_ATTR = {"a": "href", "link": "href", "script": "src", "img": "src", "iframe": "src", "source": "src",
              "embed": "src", "video": "src", "audio": "src", "form": "action", "use": "href", "image": "href"}


class _PageLinks:
    """The links and anchor ids of one built page (mkdocs output is regular enough for regular expressions)."""

    def __init__(self, text: str) -> None:
        self.links: list[tuple[str, str]] = []
        for match in _TAG_RE.finditer(text):
            tag = match.group(1).lower()
            for name, dq, sq, bare in _ATTR_RE.findall(match.group(2)):
                name = name.lower()
                if name == _LINK_ATTR[tag] or (tag in ("use", "image") and name == "xlink:href"):
                    self.links.append((tag, html.unescape(dq or sq or bare)))
        self.ids = {html.unescape(a or b or c) for a, b, c in _ID_RE.findall(text)}


def check_site(build_dir: Path) -> tuple[list[str], int]:
    """Every internal link of every page resolves (file and #anchor); nothing is loaded from elsewhere.

    External links are allowed only as plain <a href="http(s)://..."> navigation; scripts, styles, images
    and frames must come from the site itself, so viewing it makes no request beyond its own host.
    """
    import posixpath

    problems: list[str] = []
    files = {p.relative_to(build_dir).as_posix() for p in build_dir.rglob("*") if p.is_file()}
    dirs = {posixpath.dirname(f) for f in files}
    pages = {rel: _PageLinks((build_dir / rel).read_text(encoding="utf-8"))
             for rel in sorted(f for f in files if f.endswith(".html"))}
    checked = 0
    for rel, parser in pages.items():
        for tag, url in parser.links:
            checked += 1
            parts = urlsplit(url)
            scheme = parts.scheme.lower()
            if scheme in ("http", "https") or url.startswith("//"):
                if tag != "a":
                    problems.append(f"{rel}: <{tag}> loads {url} from another host")
                continue
            if scheme == "data" and tag in ("img", "source"):
                continue
            if scheme or parts.netloc:
                problems.append(f"{rel}: <{tag}> uses a non-http(s) URL {url!r}")
                continue
            fragment = unquote(parts.fragment)
            if not parts.path:  # same-page anchor
                if fragment and fragment not in parser.ids:
                    problems.append(f"{rel}: link to missing anchor #{fragment}")
                continue
            path = unquote(parts.path)
            if path.startswith("/"):
                # only mkdocs' 404 page links from the server root (it is served at any depth)
                if rel != "404.html":
                    problems.append(f"{rel}: absolute link {url!r} (breaks when the site is not at the server root)")
                    continue
                target = posixpath.normpath(path.lstrip("/"))
            else:
                target = posixpath.normpath(posixpath.join(posixpath.dirname(rel), path))
            if target in dirs or path.endswith("/"):
                target = posixpath.join(target, "index.html")
            if target.startswith("../") or target == "..":
                problems.append(f"{rel}: link {url!r} leaves the site")
            elif target not in files:
                problems.append(f"{rel}: broken link {url!r}")
            elif fragment and target in pages and fragment not in pages[target].ids:
                problems.append(f"{rel}: link {url!r} points to a missing anchor")
    return problems, checked


def watched_inputs(root: Path) -> list[Path]:
    """What `peftkb docs serve` watches: a change here re-renders the pages."""
    site = root / "site"
    return [p for p in (root / "catalog", root / "taxonomy", root / "reference_impls", site / "templates",
                        site / "assets") if p.exists()]


def _inputs_stamp(root: Path) -> tuple:
    return tuple(sorted((str(p), p.stat().st_mtime_ns, p.stat().st_size)
                        for folder in watched_inputs(root) for p in folder.rglob("*") if p.is_file()))


def serve_site(root: Path | None = None, *, dev_addr: str = "127.0.0.1:8000", open_browser: bool = False,
               poll_seconds: float = 1.0) -> None:
    """Render the pages, then `mkdocs serve` them; edits to the catalog, taxonomy, reference implementations,
    templates or assets re-render the pages (and mkdocs reloads the browser)."""
    import threading

    from mkdocs.commands.serve import serve
    from peftkb.loader import find_root, load_catalog

    root = (root or find_root()).resolve()
    paths = SitePaths.for_root(root)
    nav = render_docs(load_catalog(root), paths).nav  # errors here stop before serving
    stop = threading.Event()

    def rerender() -> None:
        stamp = _inputs_stamp(root)
        while not stop.wait(poll_seconds):
            now = _inputs_stamp(root)
            if now == stamp:
                continue
            stamp = now
            try:
                result = render_docs(load_catalog(root), paths)
            except PeftkbError as exc:  # keep serving the last good pages
                sys.stderr.write(f"peftkb: pages not updated:\n{exc}\n")
                continue
            nav[:] = result.nav  # mkdocs reloads its config (and this nav) on every rebuild
            sys.stderr.write(f"peftkb: re-rendered {len(result.pages)} pages\n")

    logger = logging.getLogger("mkdocs")
    handler = _StderrHandler(level=logging.INFO)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    watcher = threading.Thread(target=rerender, name="peftkb-rerender", daemon=True)
    watcher.start()
    try:
        serve(config_file=str(paths.config_file), livereload=True, open_in_browser=open_browser,
              docs_dir=str(paths.docs_dir), nav=nav, dev_addr=dev_addr, strict=False)
    except Exception as exc:  # mkdocs reports bad addresses, a busy port, config errors this way
        from mkdocs.exceptions import MkDocsException

        if isinstance(exc, (MkDocsException, OSError)):
            raise SiteError(f"mkdocs serve failed: {exc}") from None
        raise
    finally:
        stop.set()
        logger.removeHandler(handler)


def summarize(report: BuildReport) -> str:
    return (f"built {report.pages} pages ({report.files} generated files) into {report.build_dir} "
            f"in {report.seconds:.1f}s; {report.links_checked} links checked, none broken")
