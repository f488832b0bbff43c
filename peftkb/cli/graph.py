"""`peftkb graph ID`: a method's lineage (what it builds on, what builds on it) in four formats."""
from __future__ import annotations

import json
from enum import Enum

import typer

from peftkb import query
from peftkb.cli.common import complete_method_id, index
from peftkb.cli.output import text


class GraphFormat(str, Enum):
    text = "text"
    mermaid = "mermaid"
    dot = "dot"
    json = "json"


def graph(
    method_id: str = typer.Argument(..., metavar="ID", help="Method id, name or alias.", autocompletion=complete_method_id),
    fmt: GraphFormat = typer.Option(GraphFormat.text, "--format", "-f", help="Output format.", case_sensitive=False),
) -> None:
    """Show a method's lineage: the methods it builds on and the methods built on it."""
    from peftkb.graph import KnowledgeGraph, to_dot, to_mermaid

    cat = index()
    m = query.find_method(cat, method_id)
    kg = KnowledgeGraph(cat)
    edges = kg.neighbourhood(m.id)
    names = {x.id: x.name for x in cat.methods}
    if fmt is GraphFormat.mermaid:
        text(to_mermaid(edges, names, focus=m.id))
    elif fmt is GraphFormat.dot:
        text(to_dot(edges, names, focus=m.id))
    elif fmt is GraphFormat.json:
        text(json.dumps({"method": m.id, "builds_on": kg.builds_on(m.id), "built_on_by": kg.built_on(m.id),
                         "combined_in": kg.combiners_of(m.id),
                         "edges": [{"source": e.source, "target": e.target, "kind": e.kind} for e in edges]},
                        indent=2, sort_keys=True))
    else:
        lines = [f"{m.name} ({m.id})"]
        for label, ids in (("builds on", kg.builds_on(m.id)), ("built on by", kg.built_on(m.id)),
                           ("combined in", kg.combiners_of(m.id))):
            lines.append(f"  {label}: " + (", ".join(ids) if ids else "-"))
        if edges:
            lines.append("  edges:")
            lines += [f"    {e.source} --{e.kind}--> {e.target}" for e in edges]
        text("\n".join(lines))


def register(app: typer.Typer) -> None:
    app.command("graph")(graph)
