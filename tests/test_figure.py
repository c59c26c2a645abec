"""figure_dict / figure_json: trace shapes, rounding, escaping, payload size and speed."""

from __future__ import annotations

import time

import numpy as np
import orjson

from axon_core.figure import figure_dict, figure_json
from axon_core.graph import GraphState
from axon_core.layout import ForceLayout
from steps_factory import random_steps, step

XSS = "<img src=x onerror=alert(1)>"


def small():
    g = GraphState()
    g.add_step(step(1, [(10, 4.0), (20, 0.6), (30, 0.2)]))
    g.add_step(step(2, [(20, 2.0), (30, 1.0)]))
    snap = g.snapshot()
    pos = {10: (0.12345, 1.0, -2.0), 20: (1.0, 0.0, 0.0), 30: (np.float32(0.5), 0.25, 2.3333333)}
    return snap, pos


def big():
    """300 nodes, 1,000 edges, laid out."""
    g = GraphState()
    for s in random_steps(60, n_features=400, k=12, seed=2):
        g.add_step(s)
    snap = g.snapshot(max_nodes=300, max_edges=1000)
    layout = ForceLayout(seed=0)
    for _ in range(3):
        pos = layout.update([n.index for n in snap.nodes],
                            [(e.source, e.target, e.weight) for e in snap.edges])
    return snap, pos


def test_trace_shapes_and_customdata():
    snap, pos = small()
    fig = figure_dict(snap, pos, {10: "ten"})
    assert set(fig) == {"data", "layout"}
    assert all(t["type"] == "scatter3d" for t in fig["data"])
    names = [t["name"] for t in fig["data"]]
    assert names == ["edges weak", "edges mid", "edges strong", "features", "active", "edges negative weak",
                     "edges negative mid", "edges negative strong", "planes"]
    assert all(fig["data"][i]["x"] == [] for i in (5, 6, 7, 8))  # unsigned, one layer: nothing there
    nodes = fig["data"][3]
    assert len(nodes["x"]) == len(nodes["y"]) == len(nodes["z"]) == len(snap.nodes) == 3
    assert nodes["customdata"] == [10, 20, 30] and nodes["hoverinfo"] == "text"
    assert nodes["hovertext"][0].startswith("ten<br>#10") and "peak 4.00" in nodes["hovertext"][0]
    active = fig["data"][4]
    assert sorted(active["customdata"]) == [20, 30] == sorted(snap.active)
    assert active["marker"]["symbol"] == "circle-open"
    named = fig["layout"]["scene"]["annotations"]  # the newest token's features, named in the scene
    assert sorted(int(a["name"]) for a in named) == [20, 30]
    assert [a["text"] for a in named] == [{"20": "#20", "30": "#30"}[a["name"]] for a in named]
    assert all((a["x"], a["y"], a["z"]) == tuple(round(float(c), 3) for c in pos[int(a["name"])]) for a in named)


def test_scene_names_point_inward_and_never_stack_on_one_another():
    """The newest token's eight names: a node right of the opening view's middle
    (screen horizontal: y - x) is named on its left, and the other way round, so
    no name is pushed past the canvas edge; on each side the names stack in the
    order their nodes show top to bottom, 22 px apart, so none lands on another."""
    snap, pos = big()
    fig = figure_dict(snap, pos, {})
    named = fig["layout"]["scene"]["annotations"]
    assert len(named) == 8
    half = fig["layout"]["scene"]["xaxis"]["range"][1]
    eye = fig["layout"]["scene"]["camera"]["eye"]  # the view the figure opens with, looking at the origin
    ahead = -np.array([eye["x"], eye["y"], eye["z"]])
    screen_up = np.array([0.0, 0.0, 1.0]) - (ahead @ [0.0, 0.0, 1.0]) / (ahead @ ahead) * ahead
    for a in named:
        across = (a["y"] - a["x"]) / (2 * half)
        if abs(across) > 0.1:
            assert (a["ax"] < 0) == (across > 0), a
        assert (a["xanchor"] == "right") == (a["ax"] < 0)
    for left in (True, False):
        side = sorted((a for a in named if (a["ax"] < 0) == left), key=lambda a: a["ay"])
        assert [a["ay"] for a in side] == [-78 + 22 * i for i in range(len(side))]
        up = [float(np.array([a["x"], a["y"], a["z"]]) @ screen_up) for a in side]
        assert up == sorted(up, reverse=True), up  # the highest node's name is the top one


def test_edges_segments_and_buckets():
    snap, pos = small()
    fig = figure_dict(snap, pos, None)
    edge_traces = fig["data"][:3]
    assert all(t["mode"] == "lines" and t["x"] == [] for t in fig["data"][5:])  # unsigned: no negative edges
    points = sum(len(t["x"]) for t in edge_traces)
    assert points == 3 * len(snap.edges) == 9
    for t in edge_traces:
        assert t["x"][2::3] == [None] * (len(t["x"]) // 3)
        assert t["hoverinfo"] == "skip"
    # weights: (20,30)=0.2+1.0=1.2 strongest, (10,20)=0.6 mid, (10,30)=0.2 weak
    assert [len(t["x"]) // 3 for t in edge_traces] == [1, 1, 1]
    assert edge_traces[2]["x"][:2] == [1.0, 0.5]  # 20 → 30
    widths = [t["line"]["width"] for t in edge_traces]
    assert widths == sorted(widths) and widths[0] < widths[2]


def test_rounding_sizes_and_colours():
    snap, pos = small()
    nodes = figure_dict(snap, pos, None)["data"][3]
    assert nodes["x"] == [0.123, 1.0, 0.5] and nodes["z"] == [-2.0, 0.0, 2.333]
    assert all(type(v) is float for v in nodes["x"])  # numpy scalars converted
    by_index = dict(zip(nodes["customdata"], nodes["marker"]["size"]))
    acts = {n.index: n.activation for n in snap.nodes}
    assert sorted(by_index, key=by_index.get) == sorted(acts, key=acts.get)  # size ~ activation
    assert min(by_index.values()) >= 4.0  # floor
    assert nodes["marker"]["color"] == [round(acts[i], 2) for i in nodes["customdata"]]


def test_layout_dark_axisless_constant_uirevision():
    snap, pos = small()
    layout = figure_dict(snap, pos, None)["layout"]
    assert layout["uirevision"] == "axon" and layout["scene"]["uirevision"] == "axon"
    assert layout["margin"] == {"l": 0, "r": 0, "t": 0, "b": 0}
    assert layout["scene"]["aspectmode"] == "cube"
    for axis in ("xaxis", "yaxis", "zaxis"):
        assert layout["scene"][axis]["visible"] is False
        assert layout["scene"][axis]["showbackground"] is False
    assert layout["paper_bgcolor"].startswith("#0") and layout["transition"] == {"duration": 0}


def test_missing_positions_and_empty_graph():
    snap, pos = small()
    del pos[30]
    fig = figure_dict(snap, pos, None)
    assert fig["data"][3]["customdata"] == [10, 20]
    assert sum(len(t["x"]) for t in fig["data"][:3]) == 3  # only the 10–20 edge
    empty = figure_dict(GraphState().snapshot(), {}, None)
    assert empty["data"][3]["x"] == [] and orjson.loads(orjson.dumps(empty))


def test_labels_are_escaped():
    snap, pos = small()
    raw = figure_json(snap, pos, {10: XSS, 20: 'Tom & "Jerry"'}).decode()
    assert XSS not in raw and "<img" not in raw
    assert "&lt;img src=x onerror=alert(1)&gt;" in raw
    # Plotly decodes &amp; but not &quot;: quotes stay quotes (inert without < and >)
    assert 'Tom &amp; \\"Jerry\\"' in raw and "&quot;" not in raw
    fig = orjson.loads(raw)
    assert fig["data"][3]["hovertext"][0].startswith("&lt;img")
    assert 'Tom &amp; "Jerry"' in [a["text"] for a in fig["layout"]["scene"]["annotations"]]  # 20 fired on the newest token: named in the scene


def test_figure_json_matches_dict():
    snap, pos = small()
    assert orjson.loads(figure_json(snap, pos, None)) == orjson.loads(
        orjson.dumps(figure_dict(snap, pos, None)))


def test_payload_size_and_build_time_at_300_nodes():
    snap, pos = big()
    assert len(snap.nodes) == 300 and len(snap.edges) == 1000
    labels = {n.index: f"mentions of topic {n.index} in news & <code> text" for n in snap.nodes}
    times = []
    for _ in range(20):
        t = time.perf_counter()
        payload = figure_json(snap, pos, labels)
        times.append(time.perf_counter() - t)
    ms, kb = 1000 * float(np.median(times)), len(payload) / 1024
    print(f"\nfigure: {kb:.1f} KB, {ms:.2f} ms median build (dict + orjson) at 300 nodes / 1000 edges")
    assert kb <= 100  # the time is printed, not decided on (benchmarks/frame.py measures it)
    fig = orjson.loads(payload)
    assert len(fig["data"][3]["customdata"]) == 300
    assert sum(len(t["x"]) for t in fig["data"][:3]) == 3000
