"""Catalog commands: list, show, search, tree, stats, cite.

Every one reads the fast index (`peftkb.index`: plain records from the validated cache), never pydantic.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from peftkb import query
from peftkb.cli.common import FORMAT_OPTION, complete_category_id, complete_method_id, index
from peftkb.cli.output import Format, emit, text
from peftkb.errors import NotFoundError, UsageError, did_you_mean

if TYPE_CHECKING:
    from peftkb.model import Method

SCHEMES = {"han": "han2024", "han2024": "han2024", "lialin": "lialin2023", "lialin2023": "lialin2023",
           "ding": "ding2023", "ding2023": "ding2023", "peft_docs": "peft_docs", "peft": "peft_docs"}
LIST_COLUMNS = ["id", "name", "category", "year", "mergeable", "survey", "reference"]
SORT_KEYS = {"id": lambda m: m.id, "name": lambda m: m.name.casefold(), "year": lambda m: (m.year, m.id),
             "category": lambda m: (m.category, m.id)}


def method_row(m: "Method") -> dict[str, Any]:
    return {"id": m.id, "name": m.name, "category": m.category, "year": m.year,
            "mergeable": m.properties.mergeable, "survey": m.survey.confidence,
            "reference": m.implementations.reference}


def _property_filter(spec: str, methods: list):
    """`mergeable` (true), `no-mergeable`/`mergeable=false`, or `inserts_at=ffn`.

    Names and values are checked against what the catalog holds: a misspelt name is bad input, a
    value no method has is "not found" (with suggestions), never a silently empty list.
    """
    known = set(methods[0].properties) if methods else set()
    name, equals, wanted = spec.partition("=")
    name = name.strip().replace("-", "_")
    if equals and not wanted.strip():
        raise UsageError(f"--property '{spec}': give a value after '=', or just the name for true")
    negate = name.startswith("no_") and name[3:] in known
    if negate:
        if wanted:
            raise UsageError(f"'{spec}': give no-NAME or NAME=VALUE, not both")
        name, wanted = name[3:], "false"
    if name not in known:
        raise UsageError(f"unknown property '{name}'" + did_you_mean(name, known))
    wanted = wanted.strip().lower() or "true"
    values = [getattr(m.properties, name) for m in methods]
    if all(isinstance(v, bool) for v in values):
        if wanted not in ("true", "false", "yes", "no"):
            raise UsageError(f"property '{name}' is true or false, not '{wanted}'")
        truth = wanted in ("true", "yes")
        return lambda m: getattr(m.properties, name) is truth
    seen = {str(x).lower() for v in values for x in (v if isinstance(v, list) else [v]) if x is not None}
    if wanted not in seen:
        raise NotFoundError(f"no method has {name}={wanted}" + did_you_mean(wanted, seen)
                            + "; values in the catalog: " + ", ".join(sorted(seen)))

    def keep(m: "Method") -> bool:
        value = getattr(m.properties, name)
        if isinstance(value, list):
            return wanted in (str(x).lower() for x in value)
        return str(value).lower() == wanted

    return keep


def list_methods(
    category: Optional[str] = typer.Option(None, "--category", "-c", help="Category id, slug or name; includes its subtree.",
                                           autocompletion=complete_category_id),
    since: Optional[int] = typer.Option(None, "--since", help="Only methods from this year on."),
    until: Optional[int] = typer.Option(None, "--until", help="Only methods up to this year."),
    prop: list[str] = typer.Option([], "--property", "-p", help="Property filter: NAME, no-NAME or NAME=VALUE (repeatable)."),
    has_impl: bool = typer.Option(False, "--has-impl", help="Only methods with a reference implementation."),
    in_survey: bool = typer.Option(False, "--in-survey", help="Only methods the survey places."),
    in_experiments: bool = typer.Option(False, "--in-experiments", help="Only the survey's experiment methods."),
    tag: list[str] = typer.Option([], "--tag", "-t", help="Only methods with this tag (repeatable; all must match)."),
    sort: str = typer.Option("id", "--sort", help="Sort by id, name, year or category."),
    scheme: Optional[str] = typer.Option(None, "--scheme", help="Read --category as a class of another taxonomy: "
                                         "han, lialin, ding or peft-docs (see `peftkb crosswalk`)."),
    fmt: Format = FORMAT_OPTION,
) -> None:
    """List methods, optionally filtered by category, year, property, implementation or tag."""
    from peftkb.index import strip_none

    for option, value in (("--category", category), ("--scheme", scheme), ("--sort", sort)):
        if value is not None and not value.strip():
            raise UsageError(f"{option} is empty")
    cat = index()  # plain records from the cache: listing never needs pydantic
    if sort not in SORT_KEYS:
        raise UsageError(f"cannot sort by '{sort}'" + did_you_mean(sort, SORT_KEYS) + "; use " + ", ".join(SORT_KEYS))
    methods = list(cat.methods)
    title = "PEFT methods"
    if scheme is not None:
        key = SCHEMES.get(scheme.lower().replace("-", "_"))
        if key is None:
            raise UsageError(f"unknown scheme '{scheme}'" + did_you_mean(scheme, SCHEMES) + "; use " + ", ".join(SCHEMES))
        if not category:
            raise UsageError("--scheme needs --category, a class of that scheme")
        wanted = category.lower().strip("/")
        classes = {m.crosswalk[key]["class"] for m in methods if m.crosswalk and m.crosswalk.get(key)}
        known = classes | {c.rsplit("/", i)[0] for c in classes for i in range(1, c.count("/") + 1)}
        if wanted not in known:
            raise NotFoundError(f"no class '{category}' in the {key} scheme" + did_you_mean(wanted, known)
                                + "; its classes: " + ", ".join(sorted(known)))
        methods = [m for m in methods if m.crosswalk and m.crosswalk.get(key)
                   and (m.crosswalk[key]["class"] == wanted or m.crosswalk[key]["class"].startswith(wanted + "/"))]
        title = f"{key}: {wanted}"
    elif category:
        node = query.find_category(cat, category)
        methods = query.methods_in(cat, node.id)
        title = f"{node.name} ({node.id})"
    if since is not None and until is not None and since > until:
        raise UsageError(f"--since {since} is after --until {until}: no year is in that range")
    if since is not None:
        methods = [m for m in methods if m.year >= since]
    if until is not None:
        methods = [m for m in methods if m.year <= until]
    for spec in prop:
        keep = _property_filter(spec, cat.methods)
        methods = [m for m in methods if keep(m)]
    if has_impl:
        methods = [m for m in methods if m.implementations.reference]
    if in_survey:
        methods = [m for m in methods if m.survey.confidence != "not-in-survey"]
    if in_experiments:
        methods = [m for m in methods if m.survey.in_experiments]
    known_tags = {t for m in cat.methods for t in m.tags}
    for t in tag:
        if t not in known_tags:
            raise NotFoundError(f"no method has the tag '{t}'" + did_you_mean(t, known_tags))
        methods = [m for m in methods if t in m.tags]
    methods.sort(key=SORT_KEYS[sort])
    rows = [method_row(m) for m in methods]
    emit(rows, fmt, columns=LIST_COLUMNS, title=title,
         data=[strip_none(m) for m in methods])


def show(
    method_id: Optional[str] = typer.Argument(None, metavar="ID", help="Method id, name or alias (any case).",
                                              autocompletion=complete_method_id),
    peft_config: Optional[Path] = typer.Option(None, "--peft-config",
                                               help="A peft adapter_config.json (or its folder): show its method."),
    fmt: Format = FORMAT_OPTION,
) -> None:
    """Show everything the knowledge base holds about one method (or the method of a peft config)."""
    from peftkb.index import strip_none

    cat = index()
    if peft_config is not None:
        if method_id is not None:
            raise UsageError("give an ID or --peft-config, not both")
        from peftkb.interop.peft_import import method_of, read_peft_config

        found, reason = method_of(read_peft_config(peft_config), cat)
        if found is None:
            raise NotFoundError(f"{peft_config}: {reason}")
        if fmt is Format.table:
            text(f"{peft_config}: {found} ({reason})\n")
        method_id = found
    elif method_id is None:
        raise UsageError("give a method ID or --peft-config PATH")
    m = query.find_method(cat, method_id)
    record = strip_none(m)  # what model_dump(exclude_none=True) gives, without pydantic
    if fmt in (Format.json, Format.yaml):
        emit([], fmt, data=record)
    elif fmt is Format.ids:
        text(m.id)
    elif fmt is Format.csv:
        emit([{"field": k, "value": v} for k, v in _flatten(record)], fmt, columns=["field", "value"])
    else:
        text(render_card(m, cat))


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [kv for k, v in value.items() for kv in _flatten(v, f"{prefix}.{k}" if prefix else k)]
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return [kv for i, v in enumerate(value) for kv in _flatten(v, f"{prefix}[{i}]")]
    return [(prefix, value)]


def render_card(m: "Method", cat: Any) -> str:
    path = " > ".join(c.name for c in query.ancestors(cat, m.category))
    lines = [f"{m.name}" + (f" — {m.full_name}" if m.full_name and m.full_name != m.name else ""),
             f"  id: {m.id}" + (f"   aliases: {', '.join(m.aliases)}" if m.aliases else ""),
             f"  category: {path} ({m.category})",
             f"  year: {m.year}" + ("   (baseline, not a PEFT method)" if m.kind == "baseline" else "")]
    s = m.survey
    placed = f"{s.leaf} (confidence: {s.confidence})" if s.leaf else "not placed by the survey"
    lines.append(f"  survey: {placed}" + ("; in its experiments" if s.in_experiments else ""))
    lines += ["", "  " + m.summary, ""]
    if m.trainable_params:
        lines.append("  trainable parameters:")
        tp = m.trainable_params
        for scope, source in query.formulas(tp).items():
            where = {"per_target": f"for each targeted module ({', '.join(tp.targets)})",
                     "per_layer": "per layer, times n_layers", "total": "once"}[scope]
            lines.append(f"    {source}    {where}")
        if tp.note:
            lines.append(f"    note: {tp.note}")
    if m.hyperparameters:
        lines.append("  hyperparameters:")
        for h in m.hyperparameters:
            default = "" if h.default is None else f" = {h.default}"
            lines.append(f"    {h.name}: {h.type}{default}   {h.meaning}" + (f" [{h.range}]" if h.range else ""))
    p = m.properties
    lines.append("  properties:")
    lines.append(f"    inserts at: {', '.join(p.inserts_at)}" + (f" ({p.placement})" if p.placement else ""))
    lines.append(f"    mergeable: {'yes' if p.mergeable else 'no'}; inference overhead: {p.inference_overhead}")
    flags = [k.replace("_", " ") for k in ("changes_sequence_length", "needs_quantized_base",
                                           "supports_multi_task", "trains_base_weights") if getattr(p, k)]
    if flags:
        lines.append(f"    {'; '.join(flags)}")
    edges = query.relation_edges(m)
    if edges:
        lines.append("  relations: " + "; ".join(f"{k.replace('_', ' ')} {t}" for k, t in edges))
    impl = m.implementations
    parts = []
    if impl.reference:
        parts.append(f"reference {impl.reference}")
    if impl.peft:
        parts.append(f"peft {impl.peft.peft_type}" + (f" ({impl.peft.option})" if impl.peft.option else ""))
    if impl.adapters:
        parts.append("adapters " + ", ".join(a.config for a in impl.adapters))
    if parts:
        lines.append("  implementations: " + "; ".join(parts))
    if m.papers:
        lines.append("  papers:")
        for paper in m.papers:
            authors = ", ".join(paper.authors[:3]) + (" et al." if len(paper.authors) > 3 else "")
            ident = f" arXiv:{paper.arxiv}" if paper.arxiv else ""
            lines.append(f"    [{paper.role}] {authors.rstrip('.')}. {paper.title}. {paper.venue or paper.year}.{ident}")
    if m.notes:
        lines += ["", "  note: " + m.notes]
    return "\n".join(lines)


def search(
    words: str = typer.Argument(..., metavar="TEXT", help="Words to look for."),
    limit: int = typer.Option(20, "--limit", "-n", min=1, help="Show at most this many hits."),
    fmt: Format = FORMAT_OPTION,
) -> None:
    """Search names, aliases, summaries, paper titles and authors; best match first."""
    cat = index()
    hits = query.search(cat, words)[:limit]
    if not hits:
        raise NotFoundError(f"nothing matches '{words}'")
    rows = [{"id": m.id, "name": m.name, "category": m.category, "year": m.year, "score": score}
            for score, m in hits]
    emit(rows, fmt, columns=["id", "name", "category", "year", "score"], title=f"search: {words}")


def tree(fmt: Format = FORMAT_OPTION) -> None:
    """Show the survey's taxonomy with the number of methods in each category (its subtree included)."""
    cat = index()
    counts = {c.id: len(query.methods_in(cat, c.id)) for c in cat.categories}
    rows = [{"id": c.id, "name": c.name, "parent": c.parent, "depth": query.depth(c), "methods": counts[c.id]}
            for c in cat.categories]
    if fmt is Format.table:
        lines = []
        for c in cat.categories:
            lines.append(f"{'  ' * query.depth(c)}{c.name} [{c.id}] ({counts[c.id]})")
        text("\n".join(lines))
    elif fmt in (Format.json, Format.yaml):
        def node(cid: str | None) -> list[dict[str, Any]]:
            return [{"id": c.id, "name": c.name, "definition": c.definition, "methods": counts[c.id],
                     "children": node(c.id)} for c in cat.categories if c.parent == cid]
        emit(rows, fmt, data=node(None))
    else:
        emit(rows, fmt, columns=["id", "name", "parent", "depth", "methods"])


def stats(fmt: Format = FORMAT_OPTION) -> None:
    """Count methods per category, with implementations, survey placement and year span."""
    cat = index()
    rows = []
    for c in cat.categories:
        ms = query.methods_in(cat, c.id)
        rows.append({"category": c.id, "methods": len(ms),
                     "in_survey": sum(m.survey.confidence != "not-in-survey" for m in ms),
                     "with_reference": sum(bool(m.implementations.reference) for m in ms),
                     "in_peft": sum(bool(m.implementations.peft) for m in ms),
                     "years": f"{min(m.year for m in ms)}-{max(m.year for m in ms)}" if ms else ""})
    total = cat.methods
    rows.append({"category": "(all)", "methods": len(total),
                 "in_survey": sum(m.survey.confidence != "not-in-survey" for m in total),
                 "with_reference": sum(bool(m.implementations.reference) for m in total),
                 "in_peft": sum(bool(m.implementations.peft) for m in total),
                 "years": f"{min(m.year for m in total)}-{max(m.year for m in total)}" if total else ""})
    emit(rows, fmt, columns=["category", "methods", "in_survey", "with_reference", "in_peft", "years"],
         title="peftkb catalog statistics")


def cite(
    method_ids: list[str] = typer.Argument(None, metavar="ID...", help="Method ids, names or aliases.",
                                           autocompletion=complete_method_id),
    category: Optional[str] = typer.Option(None, "--category", "-c", help="Cite every method in this category.",
                                           autocompletion=complete_category_id),
    original_only: bool = typer.Option(False, "--original-only", help="Only each method's original paper."),
) -> None:
    """Print BibTeX for the papers of the given methods (or of a whole category)."""
    from peftkb.bibtex import cite_key, to_bibtex

    if category is not None and not category.strip():
        raise UsageError("--category is empty")
    cat = index()
    methods = [query.find_method(cat, key) for key in method_ids or []]
    if category:
        methods += query.methods_in(cat, query.find_category(cat, category).id)
    if not methods:
        raise UsageError("give at least one method id or --category")
    seen: dict[str, str] = {}
    for m in methods:
        for paper in m.papers:
            if original_only and paper.role != "original":
                continue
            key = cite_key(paper)
            entry = to_bibtex(paper, key)
            if key in seen and seen[key] != entry:  # two different papers share a natural key
                key = f"{key}{chr(ord('a') + sum(k.startswith(key) for k in seen))}"
                entry = to_bibtex(paper, key)
            seen.setdefault(key, entry)
    if not seen:
        raise NotFoundError("no papers recorded for " + ", ".join(m.id for m in methods))
    text("\n\n".join(seen.values()))


def register(app: typer.Typer) -> None:
    app.command("list")(list_methods)
    app.command("show")(show)
    app.command("search")(search)
    app.command("tree")(tree)
    app.command("stats")(stats)
    app.command("cite")(cite)
