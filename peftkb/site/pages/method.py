"""One page per method (methods/<id>.md), from site/templates/method.md.j2: its lineage diagram, and its
trainable count and memory estimate on a few popular models (numbers.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment

from peftkb.model import Catalog, Method
from peftkb.site.escape import mermaid_label
from peftkb.site.model import SiteModel, method_page
from peftkb.site.search import search_width
from peftkb.site.templating import render_template


def render(env: Environment, model: SiteModel, root: Path) -> dict[str, str]:
    graph = _graph(model.catalog)
    width = search_width(model.catalog)
    return {method_page(m.id): render_template(env, "method.md.j2", method_page(m.id), m=m,
                                               lineage=_lineage(graph, m, model), search_width=width,
                                               model=model, catalog=model.catalog)
            for m in model.catalog.methods}


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


