"""The taxonomy tree and the method lineage, as plain adjacency maps.

Nodes are category ids and method ids. Edges:
  parent category -> child category      (the taxonomy tree)
  method -> target method, with a kind   (variant_of / extends / combines / generalizes; related_to is
                                          kept for `combiners_of`-style lookups but is not lineage)

Relations are stored one way in the data ("dora variant_of lora"); the inverse questions ("what builds
on LoRA?") are answered here by walking edges backwards, so two files can never disagree.

The graph has a few hundred nodes, so breadth-first walks over dicts answer every query at once; the
module imports neither networkx nor pydantic at the top, which keeps `peftkb graph` as fast as `peftkb
list`. It works on the typed catalog and on the fast index's records alike (attribute access only).

`KnowledgeGraph.to_networkx()` gives the same knowledge as one networkx DiGraph (category and method
nodes; `contains`, `placed_in` and relation edges), for analysis with networkx's algorithms; the tests
check every walk here against networkx's ancestors and descendants on that graph.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from peftkb.errors import NotFoundError, did_you_mean
from peftkb.query import LINEAGE_KINDS, relation_edges

if TYPE_CHECKING:
    from peftkb.model import Catalog, Method


@dataclass(frozen=True, order=True)
class Edge:
    source: str
    target: str
    kind: str


def _reach(start: str, step: dict[str, set[str]]) -> set[str]:
    """Every node reachable from `start` along `step` (start itself excluded unless on a cycle)."""
    seen: set[str] = set()
    frontier = list(step.get(start, ()))
    while frontier:
        node = frontier.pop()
        if node not in seen:
            seen.add(node)
            frontier.extend(step.get(node, ()))
    return seen


class KnowledgeGraph:
    def __init__(self, catalog: "Catalog | Any") -> None:
        self.catalog = catalog
        self.methods = {m.id: m for m in catalog.methods}
        self.categories = {c.id for c in catalog.categories}
        self._children: dict[str, set[str]] = {}
        for c in catalog.categories:
            if c.parent:
                self._children.setdefault(c.parent, set()).add(c.id)
        # lineage: one kind per (source, target), the first lineage kind listed; related_to is not lineage
        self._kinds: dict[tuple[str, str], str] = {}
        self._combines: dict[str, set[str]] = {}
        for m in catalog.methods:
            for kind, target in relation_edges(m):
                if kind in LINEAGE_KINDS:
                    self._kinds.setdefault((m.id, target), kind)
                if kind == "combines":
                    self._combines.setdefault(target, set()).add(m.id)
        self._up: dict[str, set[str]] = {}  # method -> what it builds on
        self._down: dict[str, set[str]] = {}  # method -> what builds on it
        for source, target in self._kinds:
            self._up.setdefault(source, set()).add(target)
            self._down.setdefault(target, set()).add(source)

    # -- taxonomy ---------------------------------------------------------------------------------
    def category_subtree(self, category_id: str) -> list[str]:
        """Category ids in the subtree rooted at `category_id`, itself first."""
        if category_id not in self.categories:
            raise NotFoundError(f"unknown category '{category_id}'" + did_you_mean(category_id, self.categories))
        return [category_id] + sorted(_reach(category_id, self._children) - {category_id})

    def methods_in(self, category_id: str) -> list["Method"]:
        cats = set(self.category_subtree(category_id))
        return [m for m in self.catalog.methods if m.category in cats]

    # -- lineage ----------------------------------------------------------------------------------
    def _require(self, method_id: str) -> str:
        if method_id not in self.methods:
            raise NotFoundError(f"unknown method '{method_id}'" + did_you_mean(method_id, self.methods))
        return method_id

    def builds_on(self, method_id: str) -> list[str]:
        """Every method this one derives from, directly or transitively (its ancestors)."""
        node = self._require(method_id)
        return sorted(_reach(node, self._up) - {node})

    def built_on(self, method_id: str) -> list[str]:
        """Every method that derives from this one, directly or transitively (its descendants)."""
        node = self._require(method_id)
        return sorted(_reach(node, self._down) - {node})

    def combiners_of(self, method_id: str) -> list[str]:
        """Methods that list this one under `combines` (hybrids using it)."""
        return sorted(self._combines.get(self._require(method_id), ()))

    def neighbourhood(self, method_id: str) -> list[Edge]:
        """Every lineage edge among the method, its ancestors and its descendants."""
        node = self._require(method_id)
        keep = {node} | _reach(node, self._up) | _reach(node, self._down)
        return sorted(Edge(u, v, kind) for (u, v), kind in self._kinds.items() if u in keep and v in keep)

    def edges(self) -> Iterable[Edge]:
        """Every lineage edge of the catalog."""
        return sorted(Edge(u, v, kind) for (u, v), kind in self._kinds.items())

    def to_networkx(self) -> Any:
        """The taxonomy and the lineage as one networkx DiGraph.

        Nodes `cat:<id>` (kind="category") and `m:<id>` (kind="method", name, year); edges
        cat:parent -> cat:child (kind="contains"), m:method -> cat:category (kind="placed_in") and
        m:method -> m:target for every relation (kind = the relation, related_to included).
        """
        import networkx as nx

        g = nx.DiGraph()
        for c in self.catalog.categories:
            g.add_node(f"cat:{c.id}", kind="category", name=c.name)
        for c in self.catalog.categories:
            if c.parent:
                g.add_edge(f"cat:{c.parent}", f"cat:{c.id}", kind="contains")
        for m in self.catalog.methods:
            g.add_node(f"m:{m.id}", kind="method", name=m.name, year=m.year)
            g.add_edge(f"m:{m.id}", f"cat:{m.category}", kind="placed_in")
        for m in self.catalog.methods:
            for kind, target in relation_edges(m):
                if not g.has_edge(f"m:{m.id}", f"m:{target}"):
                    g.add_edge(f"m:{m.id}", f"m:{target}", kind=kind)
        return g


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
