"""Edge significance (NPMI) and decoder-cosine edges."""

import math

import pytest
import torch

from axon_core.edges import decoder_cosines, decoder_edges, npmi, npmi_neighbours, score_edges
from axon_core.graph import GraphState
from axon_core.session import RunSession
from axon_core.generation import GenerationSettings
from steps_factory import step


def test_npmi_on_hand_built_counts():
    assert npmi(25, 50, 50, 100) == pytest.approx(0.0, abs=1e-12)  # independent
    assert npmi(30, 30, 30, 100) == pytest.approx(1.0)  # always together
    assert npmi(0, 30, 30, 100) == -1.0  # never together
    assert npmi(100, 100, 100, 100) == 1.0  # both on every token
    # More than chance, less than always: strictly between.
    v = npmi(20, 30, 40, 100)
    assert 0 < v < 1
    assert v == pytest.approx(math.log(0.2 / (0.3 * 0.4)) / -math.log(0.2))


def _graph(rows):
    g = GraphState()
    for p, feats in enumerate(rows, start=1):
        g.add_step(step(p, [(f, 1.0) for f in feats]))
    return g


def test_filter_hides_chance_edges_and_toggle_shows_all():
    # 1 and 2 always together; 3 fires on half the tokens, independently of 1 and 2
    # (together on 2 of 8 = 1/2 · 1/2); 4 fires everywhere, so it co-fires with
    # everything exactly at chance. Chance pairs have NPMI 0 and are hidden.
    rows = [[1, 2, 4], [1, 2, 4, 3], [4], [4, 3], [1, 2, 4], [4], [4, 3], [1, 2, 3, 4]]
    g = _graph(rows)
    snap = g.snapshot()
    kept = {(e.source, e.target) for e in score_edges(g, snap, "npmi")}
    every = {(e.source, e.target) for e in score_edges(g, snap, "npmi_all")}
    assert (1, 2) in kept
    assert (1, 4) not in kept and (2, 4) not in kept and (1, 3) not in kept  # exactly chance
    assert (1, 4) in every and len(every) == len(g.edges())
    scores = {(e.source, e.target): e.score for e in score_edges(g, snap, "npmi_all")}
    assert scores[(1, 2)] == pytest.approx(g.npmi(1, 2))
    assert scores[(1, 4)] == pytest.approx(0.0, abs=1e-9)


def test_min_support_hides_single_coincidence():
    g = _graph([[1, 2], [3], [3], [4], [5]])  # 1,2 together once: NPMI 1 but support 1
    assert score_edges(g, g.snapshot(), "npmi", min_support=2) == []
    assert len(score_edges(g, g.snapshot(), "npmi", min_support=1)) == 1


def test_decoder_cosine_matches_direct_computation():
    torch.manual_seed(0)
    w = torch.randn(50, 16)
    w[7] = 2.0 * w[3] + 0.01 * torch.randn(16)  # 3 and 7 nearly parallel
    idx = [3, 7, 11, 20]
    cos = decoder_cosines(w, idx)
    direct = torch.nn.functional.cosine_similarity(w[idx][:, None], w[idx][None], dim=-1)
    assert torch.allclose(cos, direct, atol=1e-6)
    edges = decoder_edges(w, idx, min_cosine=0.9)
    assert [(e.source, e.target) for e in edges] == [(3, 7)]
    assert edges[0].score == pytest.approx(float(direct[0, 1]), abs=1e-6)


def test_inspector_neighbours_by_npmi_and_session_counts():
    rows = [[1, 2, 4], [1, 2, 4], [4, 5], [4], [1, 2, 4, 5]]
    run = RunSession({"neuronpedia_id": None}, GenerationSettings(), None)
    for p, feats in enumerate(rows, start=1):
        run.add(step(p, [(f, 1.0) for f in feats]))
    top = npmi_neighbours(run.graph, 1)
    assert top[0][0] == 2 and top[0][1] == pytest.approx(1.0) and top[0][2] == 3
    counts = run.edge_counts()
    assert counts["co_firing_pairs"] == len(run.graph.edges())
    assert 0 < counts["npmi_kept"] < counts["co_firing_pairs"]
    fig = run.figure()
    drawn = sum(len([x for x in t["x"] if x is None]) for t in fig["data"] if t["name"].startswith("edges"))
    assert drawn == counts["npmi_kept"]
    run.edge_kind = "npmi_all"
    fig = run.figure()
    drawn = sum(len([x for x in t["x"] if x is None]) for t in fig["data"] if t["name"].startswith("edges"))
    assert drawn == counts["co_firing_pairs"]
