"""GraphState: nodes, edges, decay, snapshot caps, neighbours, tables."""

from __future__ import annotations

import dataclasses
import math

import pytest

from axon_core.graph import EdgeView, GraphState
from steps_factory import random_steps, step


def two_steps() -> GraphState:
    g = GraphState(decay=0.85)
    g.add_step(step(1, [(1, 2.0), (2, 1.0), (3, 0.5)], next_token_id=50, is_prompt=True))
    g.add_step(step(2, [(2, 3.0, 0.4), (3, 1.5, -0.2)], next_token_id=99))
    return g


def test_nodes_edges_weights_counts():
    g = two_steps()
    snap = g.snapshot()
    assert [n.index for n in snap.nodes] == [1, 2, 3]  # order of first appearance
    assert {(e.source, e.target): (e.count, e.weight) for e in snap.edges} == {
        (1, 2): (1, 1.0), (1, 3): (1, 0.5), (2, 3): (2, 0.5 + 1.5)}
    n2 = g.node(2)
    assert (n2.tokens, n2.first_position, n2.last_position) == (2, 1, 2)
    assert n2.history == ((1, 1.0), (2, 3.0))
    assert n2.attribution == 0.4
    assert g.tokens_seen == 2 and g.firing_count(3) == 2 and g.firing_count(1) == 1
    assert snap.edges[0] == EdgeView(2, 3, 2, 2.0)  # strongest first


def test_decay_peak_and_refire():
    g = two_steps()
    assert g.node(1).activation == pytest.approx(2.0 * 0.85)  # did not fire on token 2
    assert g.node(2).activation == 3.0
    g.add_step(step(3, []))
    g.add_step(step(4, []))
    assert g.node(2).activation == pytest.approx(3.0 * 0.85**2)
    assert g.node(2).peak == 3.0
    g.add_step(step(5, [(2, 0.2)]))  # fires again, weaker: new activation, peak kept
    assert g.node(2).activation == 0.2 and g.node(2).peak == 3.0
    assert g.node(2).tokens == 3 and g.node(2).last_position == 5


def test_active_is_latest_token_only():
    g = two_steps()
    assert g.snapshot().active == frozenset({2, 3})
    assert g.snapshot().position == 2
    g.add_step(step(3, [(1, 1.0)]))
    assert g.snapshot().active == frozenset({1})
    g.add_step(step(4, []))
    assert g.snapshot().active == frozenset()


def test_duplicate_feature_on_one_token_counts_once():
    g = GraphState()
    g.add_step(step(1, [(5, 1.0), (5, 2.0), (6, 1.0)]))
    assert g.node(5).tokens == 1 and g.node(5).peak == 2.0
    assert [(e.source, e.target, e.count) for e in g.edges()] == [(5, 6, 1)]


def test_pushes_running_list_and_top():
    g = two_steps()
    g.add_step(step(3, [(2, 1.0, 0.5)], next_token_id=99))
    g.add_step(step(4, [(2, 1.0, 0.3)], next_token_id=7))
    assert g.pushes(2) == [(99, 0.4), (99, 0.5), (7, 0.3)]
    assert g.top_pushes(2, n=1) == [(99, pytest.approx(0.9))]
    assert g.pushes(1) == []  # no attribution given


def test_snapshot_caps_keep_strongest_and_active():
    g = GraphState()
    # features 0..49 with peak = index, all co-firing in pairs (i, i+1)
    for i in range(49):
        g.add_step(step(i + 1, [(i, float(i)), (i + 1, float(i + 1))]))
    g.add_step(step(60, [(0, 0.05)]))  # weak, but active on the latest token
    snap = g.snapshot(max_nodes=10, max_edges=4)
    kept = {n.index for n in snap.nodes}
    assert kept == {0} | set(range(41, 50))
    assert len(snap.edges) == 4
    assert all(e.source in kept and e.target in kept for e in snap.edges)
    weights = [e.weight for e in snap.edges]
    assert weights == sorted(weights, reverse=True) and weights[0] == 48.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.position = 3  # type: ignore[misc]
    # a watch list's nodes are kept too, however weak (an unknown key keeps nothing)
    kept = {n.index for n in g.snapshot(max_nodes=10, keep=(3, 7, 999)).nodes}
    assert kept == {0, 3, 7} | set(range(43, 50))


def test_snapshot_default_caps_on_a_long_run():
    g = GraphState()
    for s in random_steps(200, n_features=600, k=12):
        g.add_step(s)
    snap = g.snapshot()
    assert len(g) > 300 and len(snap.nodes) == 300 and len(snap.edges) == 1500
    kept = {n.index for n in snap.nodes}
    assert snap.active <= kept
    dropped = [n.peak for n in g.snapshot(max_nodes=10_000).nodes if n.index not in kept]
    weakest_kept = min(n.peak for n in snap.nodes if n.index not in snap.active)
    assert max(dropped) <= weakest_kept


def test_neighbours_order():
    g = GraphState()
    g.add_step(step(1, [(1, 5.0), (2, 4.0), (3, 1.0), (4, 2.0)]))
    g.add_step(step(2, [(1, 5.0), (3, 1.0)]))
    # weights to 1: 2 → 4.0, 3 → 2.0 (1+1), 4 → 2.0 (count 1); ties: more co-firings first
    assert g.neighbours(1) == [(2, 1, 4.0), (3, 2, 2.0), (4, 1, 2.0)]
    assert g.neighbours(1, n=1) == [(2, 1, 4.0)]
    assert g.neighbours(999) == []


def test_top_features_table_rows():
    g = two_steps()
    g.add_step(step(3, [(3, 0.7, 0.1), (1, 0.9, -0.3)], next_token_id=5))
    rows = g.top_features_table({1: "one", 3: "<b>three</b>"}, n=2)
    assert [r["feature"] for r in rows] == [1, 3]  # latest token, by activation
    assert rows[0] == {"feature": 1, "label": "one", "activation": 0.9, "peak": 2.0,
                       "tokens": 2, "attribution": -0.3}
    assert rows[1]["label"] == "<b>three</b>"  # raw: the table renderer escapes
    rows = g.top_features_table(lambda i: f"f{i}", n=20)
    assert [r["feature"] for r in rows] == [1, 3, 2] and rows[2]["activation"] == 0.0
    assert rows[2]["label"] == "f2"
    assert g.top_features_table(None)[0]["label"] == ""


def test_npmi():
    g = GraphState()
    g.add_step(step(1, [(1, 1.0), (2, 1.0)]))
    g.add_step(step(2, [(1, 1.0)]))
    g.add_step(step(3, [(2, 1.0)]))
    g.add_step(step(4, [(3, 1.0)]))
    assert g.npmi(1, 2) == pytest.approx(0.0)  # p(1,2) = p(1) p(2) = 1/4
    assert g.npmi(1, 3) == -1.0
    h = GraphState()
    h.add_step(step(1, [(1, 1.0), (2, 1.0)]))
    h.add_step(step(2, []))
    assert h.npmi(2, 1) == pytest.approx(1.0)
    assert math.isclose(h.npmi(1, 2), h.npmi(2, 1))


def test_reset():
    g = two_steps()
    g.reset()
    snap = g.snapshot()
    assert (snap.nodes, snap.edges, snap.active, snap.position, g.tokens_seen) == (
        (), (), frozenset(), None, 0)
    g.add_step(step(1, [(9, 1.0)]))
    assert [n.index for n in g.snapshot().nodes] == [9]
