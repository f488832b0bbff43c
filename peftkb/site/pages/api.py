"""The JSON API page (api.md) and the static JSON files it documents, from site/templates/api.md.j2."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jinja2 import Environment

from peftkb.model import Catalog, Method
from peftkb.site.model import SiteModel
from peftkb.site.templating import render_template


def render(env: Environment, model: SiteModel, root: Path) -> dict[str, str]:
    catalog = model.catalog
    example = model.methods.get("lora") or (catalog.methods[0] if catalog.methods else None)
    out = {"api.md": render_template(env, "api.md.j2", "api.md", example=example, model=model, catalog=catalog)}
    # the same records as the CLI's --format json
    out["api/methods.json"] = _json([method_record(m) for m in sorted(catalog.methods, key=lambda m: m.id)])
    for m in catalog.methods:
        out[f"api/methods/{m.id}.json"] = _json(method_record(m))
    out["api/taxonomy.json"] = _json(taxonomy_record(catalog))
    return out


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
