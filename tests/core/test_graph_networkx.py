"""The fast dict walks of peftkb.graph agree with networkx's algorithms on the same knowledge."""
from __future__ import annotations

import networkx as nx
import pytest

from peftkb.graph import KnowledgeGraph
from peftkb.loader import load_catalog
from peftkb.query import LINEAGE_KINDS


@pytest.fixture(scope="module")
def graphs():
    kg = KnowledgeGraph(load_catalog())
    return kg, kg.to_networkx()


def _lineage(g: nx.DiGraph) -> nx.DiGraph:
    return nx.subgraph_view(g, filter_node=lambda n: n.startswith("m:"),
                            filter_edge=lambda u, v: g.edges[u, v]["kind"] in LINEAGE_KINDS)


def test_every_method_and_category_is_a_node_and_the_taxonomy_is_a_tree(graphs):
    kg, g = graphs
    assert {n for n, d in g.nodes(data=True) if d["kind"] == "method"} == {f"m:{m}" for m in kg.methods}
    tree = nx.subgraph_view(g, filter_edge=lambda u, v: g.edges[u, v]["kind"] == "contains",
                            filter_node=lambda n: n.startswith("cat:"))
    assert nx.is_forest(tree)


def test_ancestors_and_descendants_match_networkx(graphs):
    kg, g = graphs
    lineage = _lineage(g)
    for method in kg.methods:
        node = f"m:{method}"
        assert kg.builds_on(method) == sorted(n[2:] for n in nx.descendants(lineage, node)), method
        assert kg.built_on(method) == sorted(n[2:] for n in nx.ancestors(lineage, node)), method


def test_category_subtrees_match_networkx(graphs):
    kg, g = graphs
    tree = nx.subgraph_view(g, filter_edge=lambda u, v: g.edges[u, v]["kind"] == "contains")
    for c in kg.categories:
        assert kg.category_subtree(c)[1:] == sorted(n[4:] for n in nx.descendants(tree, f"cat:{c}")), c


def test_lineage_has_no_cycle(graphs):
    _, g = graphs
    assert nx.is_directed_acyclic_graph(_lineage(g))


def test_lora_lineage_holds_its_best_known_derivatives(graphs):
    kg, _ = graphs
    assert {"qlora", "adalora", "dora"} <= set(kg.built_on("lora"))
