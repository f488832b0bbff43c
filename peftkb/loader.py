"""YAML -> typed catalog. Collects every problem in one pass and reports each at file:line:column.

Checks, in order: file size and YAML safety (yamlsafe), schema and types (pydantic, unknown fields
rejected), file name equals id, unique ids and aliases (case-insensitive), categories and survey leaves
exist, relation targets exist, no cycle in `variant_of`/`extends`, lineage points back in time (a
method cannot be a variant of a later one; `related_to` is exempt), formula syntax and symbols,
reference implementation path inside `reference_impls/` and existing.

A validated catalog is cached as JSON (see `peftkb.cache`), so commands after the first skip YAML
parsing and cross-checks.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from peftkb.cache import (CATALOG_DIR, IMPL_DIR, TAXONOMY_FILE, cache_enabled, catalog_files, find_root, impl_dir,
                          fingerprint, read_cache, write_cache)
from peftkb.errors import CatalogError, ProblemList, did_you_mean
from peftkb.formula import ARCH_SYMBOLS, Formula, FormulaError
from peftkb.model import LINEAGE_KINDS, RELATION_KINDS, Catalog, Category, Method
from peftkb.ranges import range_problems_at
from peftkb.yamlsafe import Located, YamlProblem, dotted, load_located

def load_catalog(root: Path | None = None, *, use_cache: bool = True) -> Catalog:
    """Load and validate taxonomy + catalog; raise CatalogError listing every problem."""
    root = root or find_root()
    files = catalog_files(root)
    cache_ok = use_cache and cache_enabled()
    key = fingerprint(root, files) if cache_ok else ""
    if cache_ok:
        cached = read_cache(root, key)
        if cached is not None:
            try:
                return Catalog.model_validate(cached)
            except ValidationError:
                pass  # a cache from another schema version: rebuild it
    catalog = _load_and_check(root, files)
    if cache_ok:
        write_cache(root, key, dump_catalog(catalog))
    return catalog


def dump_catalog(catalog: Catalog) -> dict[str, Any]:
    """The catalog as JSON-ready data; the cache and the fast index both hold exactly this."""
    return catalog.model_dump(mode="json", by_alias=True)


def load_catalog_paths(root: Path, paths: list[Path]) -> Catalog:
    """Validate chosen catalog files in the context of the whole catalog (for `peftkb validate FILE...`).

    Every file is loaded, so relations to other entries resolve, but only problems in the chosen files
    (or in the taxonomy) are reported. Never cached.
    """
    chosen = {_rel(root, p) for p in paths}
    files = sorted(set(catalog_files(root)) | {p.resolve() for p in paths})
    try:
        return _load_and_check(root, files)
    except CatalogError as exc:
        mine = [p for p in exc.problems if p.file in chosen or p.file == str(TAXONOMY_FILE)]
        if mine:
            raise CatalogError(mine) from None
        return _partial_catalog(root, paths)


def _partial_catalog(root: Path, paths: list[Path]) -> Catalog:
    """The chosen files alone, once they are known to be valid in context."""
    problems = ProblemList()
    categories = _load_taxonomy(root, problems)
    methods = [Method.model_validate(load_located(p).data) for p in sorted(paths)]
    return Catalog(categories=categories, methods=methods)


# -- the checks ----------------------------------------------------------------------------------
def _rel(root: Path, path: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _load_and_check(root: Path, files: list[Path]) -> Catalog:
    problems = ProblemList()
    categories = _load_taxonomy(root, problems)
    category_ids = {c.id for c in categories}
    methods: list[Method] = []
    sources: dict[str, tuple[str, Located]] = {}
    invalid_ids: set[str] = set()

    for path in files:
        name = _rel(root, path)
        try:
            doc = load_located(path)
        except YamlProblem as exc:
            problems.add(name, exc.line, exc.column, exc.field, exc.message)
            continue
        except (OSError, UnicodeDecodeError) as exc:
            problems.add(name, 1, 1, "", f"cannot read file: {exc}")
            continue
        if not isinstance(doc.data, dict):
            problems.add(name, 1, 1, "", "a catalog file must be a YAML mapping of fields")
            continue
        method = _validate(Method, doc, name, problems)
        if method is None:
            if isinstance(doc.data.get("id"), str):  # still a known id: no cascade of dangling relations
                invalid_ids.add(doc.data["id"])
            continue
        if method.id != path.stem:
            problems.add(name, *doc.where(("id",)), "id", f"id '{method.id}' does not match the file name '{path.stem}.yaml'")
        methods.append(method)
        sources[method.id] = (name, doc)

    _check_unique(methods, sources, problems)
    ids = {m.id for m in methods} | invalid_ids
    for m in methods:
        name, doc = sources[m.id]
        _check_method(root, m, name, doc, ids, category_ids, problems)
    _check_cycles(methods, sources, problems)
    _check_chronology(methods, sources, problems)
    if problems:
        raise CatalogError(problems.items)
    return Catalog(categories=categories, methods=methods)


def _load_taxonomy(root: Path, problems: ProblemList) -> list[Category]:
    path = root / TAXONOMY_FILE
    name = _rel(root, path)
    try:
        doc = load_located(path)
    except YamlProblem as exc:
        problems.add(name, exc.line, exc.column, exc.field, exc.message)
        return []
    except OSError as exc:
        problems.add(name, 0, 0, "", f"cannot read taxonomy: {exc}")
        return []
    raw = doc.data.get("categories") if isinstance(doc.data, dict) else None
    if not isinstance(raw, list):
        problems.add(name, 1, 1, "categories", "the taxonomy must have a list `categories`")
        return []
    out: list[Category] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        cat = _validate(Category, doc, name, problems, prefix=("categories", i), data=item)
        if cat is None:
            continue
        where = doc.where(("categories", i, "id"))
        if cat.id in seen:
            problems.add(name, *where, f"categories[{i}].id", f"duplicate category id '{cat.id}'")
        expected_parent = cat.id.rpartition("/")[0] or None
        if cat.parent != expected_parent:
            problems.add(name, *doc.where(("categories", i, "parent")), f"categories[{i}].parent",
                         f"category '{cat.id}' must have parent {expected_parent!r}, not {cat.parent!r}")
        elif cat.parent is not None and cat.parent not in seen:
            problems.add(name, *doc.where(("categories", i, "parent")), f"categories[{i}].parent",
                         f"parent '{cat.parent}' is not defined before '{cat.id}'")
        seen.add(cat.id)
        out.append(cat)
    return out


def _validate(model: type[BaseModel], doc: Located, name: str, problems: ProblemList,
              prefix: tuple = (), data: Any = None) -> Any:
    try:
        return model.model_validate(doc.data if data is None else data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            field = dotted(prefix + loc)
            line, col = doc.where(prefix + loc)
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                known = _field_names(model, loc[:-1])
                message = f"unknown field '{loc[-1]}'" + did_you_mean(str(loc[-1]), known)
            elif err["type"] == "missing":
                message = "required field is missing"
            elif err["type"] == "literal_error":
                message = f"{err['input']!r} is not allowed; expected {err['ctx']['expected']}"
            elif err["type"] == "string_pattern_mismatch":
                message = f"{err['input']!r} is not a valid value (expected lowercase-kebab-case)"
            problems.add(name, line, col, field, message)
        return None


def _field_names(model: type[BaseModel], loc: tuple) -> list[str]:
    """Names of the fields of the sub-model found at `loc` inside `model`."""
    import typing

    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if isinstance(current, type) and issubclass(current, BaseModel) else None
        if field is None:
            return []
        ann = field.annotation
        for arg in (ann, *typing.get_args(ann)):
            inner = [a for a in (arg, *typing.get_args(arg)) if isinstance(a, type) and issubclass(a, BaseModel)]
            if inner:
                current = inner[0]
                break
        else:
            return []
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or n for n, f in current.model_fields.items()]
    return []


def _check_unique(methods: list[Method], sources: dict, problems: ProblemList) -> None:
    owner: dict[str, str] = {}
    for m in methods:
        name, doc = sources[m.id]
        for field, value in [("id", m.id), ("name", m.name)] + [(f"aliases[{i}]", a) for i, a in enumerate(m.aliases)]:
            key = value.casefold()
            other = owner.get(key)
            if other is not None and other != m.id:
                path = ("aliases", int(field[8:-1])) if field.startswith("aliases") else (field,)
                problems.add(name, *doc.where(path), field, f"'{value}' is already used by method '{other}' (ids, names and aliases must be unique, ignoring case)")
            elif other is None:
                owner[key] = m.id


def _check_method(root: Path, m: Method, name: str, doc: Located, ids: set[str],
                  category_ids: set[str], problems: ProblemList) -> None:
    def add(path: tuple, message: str) -> None:
        problems.add(name, *doc.where(path), dotted(path), message)

    if m.category not in category_ids:
        add(("category",), f"unknown category '{m.category}'" + did_you_mean(m.category, category_ids))
    if m.survey.leaf and m.survey.leaf not in category_ids:
        add(("survey", "leaf"), f"unknown category '{m.survey.leaf}'" + did_you_mean(m.survey.leaf, category_ids))
    for kind in RELATION_KINDS:
        for i, target in enumerate(getattr(m.relations, kind)):
            if target == m.id:
                add(("relations", kind, i), "a method cannot relate to itself")
            elif target not in ids:
                add(("relations", kind, i), f"unknown method '{target}'" + did_you_mean(target, ids))
    if m.trainable_params:
        allowed = set(ARCH_SYMBOLS) | m.hyperparameter_names
        for scope, source in m.trainable_params.formulas().items():
            path = ("trainable_params", scope)
            try:
                formula = Formula.parse(source)
            except FormulaError as exc:
                add(path, str(exc))
                continue
            per_target_only = {"d_in", "d_out", "is_ffn"}
            for sym in formula.unknown_symbols(allowed):
                add(path, f"unknown symbol '{sym}'" + did_you_mean(sym, allowed))
            if scope != "per_target":
                for sym in sorted(formula.symbols() & per_target_only):
                    add(path, f"'{sym}' is only defined in per_target formulas")
            hypers = {h.name: h for h in m.hyperparameters}
            for sym in sorted(formula.string_symbols()):
                h = hypers.get(sym)
                if h is not None and (h.type != "str" or not h.choices):
                    add(path, f"if_eq() tests '{sym}', which must be a str hyperparameter with choices")
            for sym, value in sorted(formula.string_tests()):  # if_eq(sym, "value", ...)
                h = hypers.get(sym)
                if h is not None and h.choices and value not in h.choices:
                    add(path, f"if_eq(): '{value}' is not one of {sym}'s choices ({', '.join(h.choices)})"
                        + did_you_mean(value, h.choices))
            for sym in sorted(formula.string_symbols() & set(ARCH_SYMBOLS)):
                add(path, f"if_eq() tests '{sym}', an architecture symbol (a number), not a string")
    for path, message in range_problems_at(m.hyperparameters):  # every declared range parses and is consistent
        add(path, message)
    ref = m.implementations.reference
    if ref:
        path = ("implementations", "reference")
        impl_root = impl_dir(root).resolve()  # the checkout's folder, or the installed package
        target = (impl_root.parent / ref).resolve()
        if not ref.endswith(".py") or impl_root not in target.parents:
            add(path, f"'{ref}' must be a .py file inside {IMPL_DIR}/")
        elif not target.is_file():
            add(path, f"'{ref}' does not exist")


def _check_chronology(methods: list[Method], sources: dict, problems: ProblemList) -> None:
    """A lineage relation points back in time: a method cannot be a variant of (extend, combine,
    generalize) a method published after it. `related_to` carries no chronology and is exempt."""
    years = {m.id: m.year for m in methods}
    for m in methods:
        name, doc = sources[m.id]
        for kind in LINEAGE_KINDS:
            for i, target in enumerate(getattr(m.relations, kind)):
                later = years.get(target)
                if later is not None and later > m.year:
                    path = ("relations", kind, i)
                    problems.add(name, *doc.where(path), dotted(path),
                                 f"'{target}' ({later}) is later than this method ({m.year}); a {kind} relation "
                                 "must point back in time (use related_to for a later method)")


def _check_cycles(methods: list[Method], sources: dict, problems: ProblemList) -> None:
    """Lineage must be acyclic along variant_of/extends (A variant of B variant of A is nonsense)."""
    edges = {m.id: [t for t in (*m.relations.variant_of, *m.relations.extends)] for m in methods}
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in edges.get(node, []):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                name, doc = sources[node]
                problems.add(name, *doc.where(("relations",)), "relations",
                             "cycle in variant_of/extends: " + " -> ".join(cycle))
            elif nxt in edges and state.get(nxt) is None:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for m in methods:
        if state.get(m.id) is None:
            visit(m.id, [m.id])
