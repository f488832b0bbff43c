"""The taxonomy tree and the method lineage, in one networkx DiGraph.

Nodes are `cat:<category id>` and `m:<method id>`. Edges:
  cat:parent -> cat:child      kind="contains"
  cat:leaf   -> m:method       kind="contains"    (the method's `category`)
  m:method   -> m:target       kind=<relation>    (variant_of / extends / combines / generalizes)

Relations are stored one way in the data ("dora variant_of lora"); the inverse questions ("what builds
on LoRA?") are answered here by walking edges backwards, so two files can never disagree.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from peftkb.errors import NotFoundError, did_you_mean
from peftkb.model import LINEAGE_KINDS, RELATION_KINDS, Catalog, Method


def cat(cid: str) -> str:
    return f"cat:{cid}"


def meth(mid: str) -> str:
    return f"m:{mid}"


@dataclass(frozen=True, order=True)
class Edge:
    source: str
    target: str
    kind: str


class KnowledgeGraph:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.methods = {m.id: m for m in catalog.methods}
        g = nx.DiGraph()
        for c in catalog.categories:
            g.add_node(cat(c.id), type="category", name=c.name)
            if c.parent:
                g.add_edge(cat(c.parent), cat(c.id), kind="contains")
        for m in catalog.methods:
            g.add_node(meth(m.id), type="method", name=m.name)
            g.add_edge(cat(m.category), meth(m.id), kind="contains")
        for m in catalog.methods:
            for kind, target in m.relations.edges():
                g.add_edge(meth(m.id), meth(target), kind=kind)
        self.g = g

    # -- taxonomy ---------------------------------------------------------------------------------
    def category_subtree(self, category_id: str) -> list[str]:
        """Category ids in the subtree rooted at `category_id`, itself first."""
        node = cat(category_id)
        if node not in self.g:
            raise NotFoundError(f"unknown category '{category_id}'" + did_you_mean(
                category_id, [c.id for c in self.catalog.categories]))
        return [category_id] + sorted(n[4:] for n in nx.descendants(self._tree(), node) if n.startswith("cat:"))

    def methods_in(self, category_id: str) -> list[Method]:
        cats = set(self.category_subtree(category_id))
        return [m for m in self.catalog.methods if m.category in cats]

    def _tree(self) -> nx.DiGraph:
        return nx.subgraph_view(self.g, filter_edge=lambda u, v: self.g.edges[u, v]["kind"] == "contains")

    # -- lineage ----------------------------------------------------------------------------------
    def _lineage(self) -> nx.DiGraph:
        return nx.subgraph_view(self.g, filter_node=lambda n: n.startswith("m:"),
                                filter_edge=lambda u, v: self.g.edges[u, v]["kind"] in LINEAGE_KINDS)

    def _require(self, method_id: str) -> str:
        if method_id not in self.methods:
            raise NotFoundError(f"unknown method '{method_id}'" + did_you_mean(method_id, self.methods))
        return meth(method_id)

    def builds_on(self, method_id: str) -> list[str]:
        """Every method this one derives from, directly or transitively (its ancestors)."""
        return sorted(n[2:] for n in nx.descendants(self._lineage(), self._require(method_id)))

    def built_on(self, method_id: str) -> list[str]:
        """Every method that derives from this one, directly or transitively (its descendants)."""
        return sorted(n[2:] for n in nx.ancestors(self._lineage(), self._require(method_id)))

    def combiners_of(self, method_id: str) -> list[str]:
        """Methods that list this one under `combines` (hybrids using it)."""
        node = self._require(method_id)
        return sorted(u[2:] for u, _, k in self.g.in_edges(node, data="kind") if k == "combines")

    def neighbourhood(self, method_id: str) -> list[Edge]:
        """Every lineage edge among the method, its ancestors and its descendants."""
        node = self._require(method_id)
        lineage = self._lineage()
        keep = {node} | nx.descendants(lineage, node) | nx.ancestors(lineage, node)
        # also direct neighbours through any relation (e.g. a hybrid combining an ancestor's sibling)
        keep |= set(lineage.predecessors(node)) | set(lineage.successors(node))
        return sorted(Edge(u[2:], v[2:], self.g.edges[u, v]["kind"]) for u, v in lineage.subgraph(keep).edges)


def to_mermaid(edges: list[Edge], names: dict[str, str], focus: str | None = None) -> str:
    """A mermaid flowchart; edges point from the derived method to what it builds on."""
    lines = ["graph BT"]
    nodes = sorted({e.source for e in edges} | {e.target for e in edges} | ({focus} if focus else set()))
    for n in nodes:
        label = names.get(n, n).replace('"', "'")
        lines.append(f'  {_mid(n)}["{label}"]')
    for e in edges:
        lines.append(f"  {_mid(e.source)} -->|{e.kind}| {_mid(e.target)}")
    if focus:
        lines.append(f"  style {_mid(focus)} stroke-width:3px")
    return "\n".join(lines)


def to_dot(edges: list[Edge], names: dict[str, str], focus: str | None = None) -> str:
    lines = ["digraph lineage {", "  rankdir=BT;"]
    nodes = sorted({e.source for e in edges} | {e.target for e in edges} | ({focus} if focus else set()))
    for n in nodes:
        label = names.get(n, n).replace("\\", "\\\\").replace('"', '\\"')
        extra = ", penwidth=3" if n == focus else ""
        lines.append(f'  "{n}" [label="{label}"{extra}];')
    for e in edges:
        lines.append(f'  "{e.source}" -> "{e.target}" [label="{e.kind}"];')
    lines.append("}")
    return "\n".join(lines)


def _mid(method_id: str) -> str:
    return "m_" + method_id.replace("-", "_")
