"""The jinja2 environment every page template renders in, and rendering one template with errors as file:line."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateError, TemplateSyntaxError, pass_context
from markupsafe import Markup, escape

from peftkb.bibtex import cite_key, to_bibtex
from peftkb.errors import PeftkbError
from peftkb.model import CROSSWALK_SCHEMES, RELATION_KINDS, Category, Method
from peftkb.site.escape import (_finalize, _md_sep, attr_text, ext_link, fence, front_title, math_html, math_md,
                                md_text, mermaid_label, prose)
from peftkb.site.formulas import count_latex, display_count_latex, formula_latex, symbol_rows
from peftkb.site.model import (CONFIDENCE_TEXT, FLAG_NAMES, INSERTION_NAMES, INVERSE_RELATION_NAMES,
                               OVERHEAD_NAMES, RELATION_NAMES, ROLE_NAMES, SOURCE_KINDS, _relative,
                               category_page, first_sentence, method_page)
from peftkb.site.search import search_front_matter
from peftkb.site.evidence import local_line, local_path, provenance_label, settings_text


class SiteError(PeftkbError):
    """The site could not be built: a template error, a broken link, or mkdocs refusing the pages."""


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
                       math_md=math_md, math_html=math_html, count_latex=count_latex,
                       display_count_latex=display_count_latex, symbol_rows=symbol_rows,
                       local_path=local_path, local_line=local_line, provenance_label=provenance_label,
                       settings_text=settings_text, to_bibtex=to_bibtex,
                       cite_key=cite_key, first_sentence=first_sentence, mermaid_label=mermaid_label,
                       latex=formula_latex, ROLE_NAMES=ROLE_NAMES,
                       INSERTION_NAMES=INSERTION_NAMES, OVERHEAD_NAMES=OVERHEAD_NAMES, FLAG_NAMES=FLAG_NAMES,
                       RELATION_NAMES=RELATION_NAMES, INVERSE_RELATION_NAMES=INVERSE_RELATION_NAMES,
                       CONFIDENCE_TEXT=CONFIDENCE_TEXT, SOURCE_KINDS=SOURCE_KINDS,
                       CROSSWALK_SCHEMES=CROSSWALK_SCHEMES,
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


def render_template(env: Environment, template: str, page_path: str, **context: Any) -> str:
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
