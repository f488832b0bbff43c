"""Graph queries on a small synthetic lineage, independent of how the real catalog grows."""
from __future__ import annotations

import pytest

from peftkb import query
from peftkb.errors import NotFoundError
from peftkb.graph import KnowledgeGraph, to_dot, to_mermaid
from peftkb.loader import load_catalog


def method_yaml(mid: str, category: str, relations: str = "{}") -> str:
    return f"""id: {mid}
name: {mid.upper()}
category: {category}
survey: {{confidence: not-in-survey}}
year: 2022
summary: A synthetic method used only to test the lineage graph queries.
properties: {{inserts_at: [attention], mergeable: true, inference_overhead: none}}
relations: {relations}
"""


@pytest.fixture
def graph(kb) -> KnowledgeGraph:
    for path in (kb.root / "catalog").glob("*.yaml"):
        path.unlink()
    kb.write("base.yaml", method_yaml("base", "reparameterized/low-rank-decomposition"))
    kb.write("child.yaml", method_yaml("child", "reparameterized/lora-derivatives/low-rank-adjustment", "{variant_of: [base]}"))
    kb.write("grandchild.yaml", method_yaml("grandchild", "reparameterized/lora-derivatives/lora-based-improvements", "{extends: [child]}"))
    kb.write("other.yaml", method_yaml("other", "additive/adapter-based"))
    kb.write("hybrid.yaml", method_yaml("hybrid", "hybrid/manual-combination", "{combines: [base, other]}"))
    kb.write("unifier.yaml", method_yaml("unifier", "unified", "{generalizes: [other]}"))
    return KnowledgeGraph(load_catalog(kb.root, use_cache=False))


def test_what_builds_on_a_method_is_transitive(graph):
    assert graph.built_on("base") == ["child", "grandchild", "hybrid"]


def test_ancestors_follow_every_relation_kind(graph):
    assert graph.builds_on("grandchild") == ["base", "child"]
    assert graph.builds_on("hybrid") == ["base", "other"]


def test_combiners_of(graph):
    assert graph.combiners_of("other") == ["hybrid"]
    assert graph.combiners_of("child") == []


def test_category_subtree_agrees_with_prefix_query(graph):
    subtree = graph.category_subtree("reparameterized")
    assert subtree[0] == "reparameterized"
    assert set(subtree) == set(query.subtree(graph.catalog, "reparameterized"))
    assert {m.id for m in graph.methods_in("reparameterized")} == {"base", "child", "grandchild"}
    assert [m.id for m in graph.methods_in("reparameterized/lora-derivatives")] == ["child", "grandchild"]


def test_neighbourhood_is_the_line_of_descent(graph):
    # ancestors and descendants only: the hybrid combining the ancestor is not in the child's line
    edges = {(e.source, e.kind, e.target) for e in graph.neighbourhood("child")}
    assert edges == {("child", "variant_of", "base"), ("grandchild", "extends", "child")}
    assert ("hybrid", "combines", "base") in {(e.source, e.kind, e.target) for e in graph.neighbourhood("base")}


def test_unknown_ids_raise_not_found_with_suggestion(graph):
    with pytest.raises(NotFoundError, match="did you mean 'child'"):
        graph.builds_on("chld")
    with pytest.raises(NotFoundError, match="unknown category"):
        graph.category_subtree("nowhere")


def test_mermaid_and_dot_name_every_edge(graph):
    edges = graph.neighbourhood("child")
    names = {m.id: m.name for m in graph.catalog.methods}
    mermaid = to_mermaid(edges, names, focus="child")
    assert mermaid.startswith("graph BT") and "m_grandchild -->|extends| m_child" in mermaid
    assert "style m_child" in mermaid
    dot = to_dot(edges, names, focus="child")
    assert dot.startswith("digraph") and '"child" -> "base" [label="variant_of"];' in dot and dot.endswith("}")


def test_related_to_is_not_lineage_and_does_not_hide_it(kb):
    for path in (kb.root / "catalog").glob("*.yaml"):
        path.unlink()
    kb.write("base.yaml", method_yaml("base", "reparameterized/low-rank-decomposition"))
    kb.write("peer.yaml", method_yaml("peer", "additive/adapter-based"))
    # child is a variant of base and also (redundantly) related to it; it is only related to peer
    kb.write("child.yaml", method_yaml("child", "reparameterized/low-rank-decomposition",
                                       "{variant_of: [base], related_to: [base, peer]}"))
    graph = KnowledgeGraph(load_catalog(kb.root, use_cache=False))
    assert graph.builds_on("child") == ["base"] and graph.built_on("peer") == []
    assert [(e.source, e.kind, e.target) for e in graph.neighbourhood("child")] == [("child", "variant_of", "base")]


def test_the_graph_reads_the_fast_index_the_same_as_the_typed_catalog(graph, kb):
    from peftkb.index import load_index

    records = KnowledgeGraph(load_index(kb.root))
    for mid in graph.methods:
        assert records.builds_on(mid) == graph.builds_on(mid) and records.built_on(mid) == graph.built_on(mid)
        assert records.neighbourhood(mid) == graph.neighbourhood(mid)
        assert records.combiners_of(mid) == graph.combiners_of(mid)
