"""Depth in the view (issue 12): a run of several layers as one graph of
(layer, index) nodes, each layer on its own plane, labelled by its own SAE,
with virtual-weight and measured-effect edges across layers."""

from __future__ import annotations

import numpy as np
import pytest

from axon_core.catalogue import Release, SaeChoice, layer_of
from axon_core.depth import causal_check, run_tokens, virtual_weights
from axon_core.edges import score_edge_columns, virtual_edge_columns
from axon_core.features import FeatureHit, key_name, node_key, split_key
from axon_core.generation import Generation, TokenStep
from axon_core.graph import GraphState
from axon_core.layout import ForceLayout
from axon_core.page.inspector import add_steer
from axon_core.session import RunSession

from test_depth import LAYERS, PROMPT, SETTINGS, layer_pairs  # noqa: F401 - the fixture


def test_node_keys_round_trip_and_never_collide():
    for layer in (None, 0, 1, 11, 127):
        for index in (0, 1, 24575, (1 << 24) - 1):
            assert split_key(node_key(layer, index)) == (layer, index)
    keys = {node_key(layer, i) for layer in (None, 0, 1, 2) for i in range(0, 1 << 24, 1 << 20)}
    assert len(keys) == 4 * 16  # layer 0 is not confused with a run of one SAE
    assert key_name(node_key(None, 7)) == "#7" and key_name(node_key(5, 7)) == "L5 #7"
    assert FeatureHit(7, 1.0, None, 5).key == node_key(5, 7) and FeatureHit(7, 1.0).key == 7


def test_release_by_layer_keeps_the_same_kind_of_sae():
    def release(ids):
        return Release("r", "m", "repo", tuple(SaeChoice("r", i, "m", None, None, None) for i in ids))

    jb = release([f"blocks.{i}.hook_resid_pre" for i in range(12)] + ["blocks.11.hook_resid_post"])
    assert jb.by_layer("blocks.8.hook_resid_pre") == {i: f"blocks.{i}.hook_resid_pre" for i in range(12)}
    scope = release(["layer_0/width_16k/average_l0_20", "layer_0/width_16k/average_l0_80",
                     "layer_1/width_16k/average_l0_77", "layer_1/width_65k/average_l0_80"])
    # layer 1 has no exact twin of l0_80 at 16k: the 16k one (longest shared beginning) is taken
    assert scope.by_layer("layer_0/width_16k/average_l0_80") == {
        0: "layer_0/width_16k/average_l0_80", 1: "layer_1/width_16k/average_l0_77"}
    assert layer_of("blocks.8.hook_resid_pre") == 8 and layer_of("no layer here") is None
    assert release(["x"]).by_layer("no layer") == {}


def test_layout_pins_nodes_to_their_planes():
    layout = ForceLayout(seed=0)
    ids = list(range(12))
    edges = [(i, (i + 5) % 12, 1.0) for i in ids]
    planes = [-3.0 if i < 4 else (0.0 if i < 8 else float("nan")) for i in ids]
    for _ in range(4):
        pos = layout.update(ids, edges, planes)
    assert all(pos[i][2] == -3.0 for i in range(4)) and all(pos[i][2] == 0.0 for i in range(4, 8))
    assert len({round(pos[i][2], 6) for i in range(8, 12)}) > 1  # NaN: free in z
    assert len({(round(p[0], 6), round(p[1], 6)) for p in pos.values()}) == 12  # spread in x, y


@pytest.fixture(scope="module")
def layered_run(layer_pairs):  # noqa: F811
    g = Generation(layer_pairs[8], PROMPT, SETTINGS, extra=[layer_pairs[i] for i in (2, 5, 11)])
    steps = g.start()
    while not g.done:
        steps.append(g.step())
    return g, steps


class RecordingLabels:
    """A label store that answers with the Neuronpedia id it was asked under."""

    arrivals = 1

    def __init__(self):
        self.requested: dict[str, set[int]] = {}

    def request(self, np_id, indices):
        self.requested.setdefault(np_id, set()).update(indices)

    def label(self, np_id, index):
        return f"{np_id}:{index}"

    def known(self, np_id, index):
        return self.label(np_id, index)


def _session(g, steps, labels=None, kind="npmi"):
    meta = {"model": "gpt2-small", "release": "gpt2-small-res-jb", "sae_id": "blocks.8.hook_resid_pre",
            "hook_name": "blocks.8.hook_resid_pre", "neuronpedia_id": "gpt2-small/8-res-jb"}
    run = RunSession(meta, SETTINGS, labels, saes=g.saes, edge_kind=kind)
    for s in steps:
        run.add(s)
    return run


def test_each_layer_is_a_plane_and_keeps_its_own_labels(layered_run):
    g, steps = layered_run
    labels = RecordingLabels()
    run = _session(g, steps, labels)
    fig = run.figure()
    nodes = fig["data"][3]
    z_of: dict[int, set] = {}
    for key, z in zip(nodes["customdata"], nodes["z"]):
        z_of.setdefault(split_key(key)[0], set()).add(z)
    assert sorted(z_of) == list(LAYERS)  # every layer has nodes on screen
    assert all(len(zs) == 1 for zs in z_of.values())  # one plane per layer ...
    planes = [next(iter(z_of[layer])) for layer in LAYERS]
    assert planes == sorted(planes) and len(set(planes)) == 4  # ... distinct, earliest lowest
    assert len(fig["data"][8]["x"]) == 4 * 6  # four plane outlines
    names = [a["text"] for a in fig["layout"]["scene"]["annotations"] if a["name"].startswith("plane")]
    assert names == [f"layer {x}" for x in LAYERS]
    # labels: each feature under its own SAE's Neuronpedia id
    wanted = {f"gpt2-small/{x}-res-jb": {f.index for s in steps for f in s.features if f.layer == x} for x in LAYERS}
    assert labels.requested == wanted
    hit = steps[-1].features[-1]
    assert run.label(hit.key) == f"gpt2-small/{hit.layer}-res-jb:{hit.index}"
    assert f"L{hit.layer} #{hit.index}" in "".join(nodes["hovertext"])
    # the table says which layer each feature belongs to; the inspector links to that SAE's page
    rows = run.table(n=100)
    newest = {(f.layer, f.index): f.activation for f in steps[-1].features}
    assert {(r["layer"], r["feature"]) for r in rows if r["activation"] > 0} == set(newest)
    info = run.inspector(hit.key)
    assert info["layer"] == hit.layer and info["url"].endswith(f"/gpt2-small/{hit.layer}-res-jb/{hit.index}")
    # the export names each feature by layer, and each edge's layers
    d = run.export_json()
    assert d["labels"][f"{hit.layer}:{hit.index}"] == run.label(hit.key)
    assert all({"source_layer", "target_layer"} <= set(e) for e in d["edges"])
    assert any(e["source_layer"] != e["target_layer"] for e in d["edges"])  # same-token co-firing across layers


def test_virtual_edges_are_the_saes_virtual_weights(layered_run, layer_pairs):  # noqa: F811
    g, steps = layered_run
    run = _session(g, steps)
    snap = run.graph.snapshot()
    saes = {x: layer_pairs[x].sae for x in LAYERS}
    a, b, w, _ = virtual_edge_columns(saes, snap.ids, run.graph, share=0.0, max_edges=10**6)
    layer_a, layer_b = [split_key(k)[0] for k in a], [split_key(k)[0] for k in b]
    assert all(x < y for x, y in zip(layer_a, layer_b)) and len(set(zip(layer_a, layer_b))) == 6
    for k in range(0, len(a), max(1, len(a) // 25)):  # spot checks against depth.virtual_weights
        (la, f), (lb, h) = split_key(a[k]), split_key(b[k])
        want = float(virtual_weights(layer_pairs[la], layer_pairs[lb], [f], [h])[0, 0])
        assert w[k] == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert np.all(np.abs(w[:-1]) >= np.abs(w[1:]))  # strongest first
    # the edge kind: NPMI within a layer, virtual weights (scaled to ±1) across layers, signed
    va, vb, vs, _ = score_edge_columns(run.graph, snap, "virtual", saes=saes)
    across = np.array([split_key(x)[0] != split_key(y)[0] for x, y in zip(va, vb)])
    assert across.any()
    assert np.abs(vs[across]).max() == pytest.approx(1.0) and (vs[across] < 0).any()
    na, nb, ns, _ = score_edge_columns(run.graph, snap, "npmi_all")
    within = {(x, y): v for x, y, v in zip(na.tolist(), nb.tolist(), ns.tolist()) if split_key(x)[0] == split_key(y)[0]}
    assert within  # (co-firing within a layer, at any NPMI)
    na, nb, ns, _ = score_edge_columns(run.graph, snap, "npmi")
    kept = {(x, y): v for x, y, v in zip(na.tolist(), nb.tolist(), ns.tolist()) if split_key(x)[0] == split_key(y)[0]}
    assert {(x, y): v for x, y, v, c in zip(va.tolist(), vb.tolist(), vs.tolist(), across) if not c} == kept
    run.edge_kind = "virtual"
    fig = run.figure(relayout=False)
    assert sum(len(t["x"]) for t in fig["data"][5:8]) > 0  # negative weights drawn in red


def test_causal_edges_and_the_side_by_side_table(layered_run, layer_pairs):  # noqa: F811
    g, steps = layered_run
    run = _session(g, steps)
    position = steps[-2].position
    tokens = run_tokens(steps, layer_pairs[8].model.tokenizer.bos_token_id)
    model = layer_pairs[8].model
    checks = [causal_check(model, tokens, position, layer_pairs[la], [layer_pairs[x] for x in LAYERS if x > la], k=4)
              for la in LAYERS[:-1]]
    rows = run.set_causal(checks)
    assert len(rows) == sum(len(c.features) * len(t.features) for c in checks for t in c.targets)
    # every row: the measured effect (−Δ), the virtual weight and the co-firing NPMI of that pair
    c, t = checks[0], checks[0].targets[0]
    f, h = c.features[0], t.features[0]
    row = next(r for r in rows if r["source"] == f"L{c.source_layer} #{f}" and r["target"] == f"L{t.layer} #{h}")
    assert row["effect"] == pytest.approx(-float(t.delta[0, 0]))
    assert row["virtual_weight"] == pytest.approx(float(virtual_weights(layer_pairs[c.source_layer],
                                                                        layer_pairs[t.layer], [f], [h])[0, 0]))
    a, b = node_key(c.source_layer, f), node_key(t.layer, h)
    assert row["npmi"] == (pytest.approx(run.graph.npmi(a, b)) if a in run.graph and b in run.graph else None)
    assert [abs(r["effect"]) for r in rows] == sorted((abs(r["effect"]) for r in rows), reverse=True)
    # drawn as signed edges between the layers' nodes on screen
    run.edge_kind = "causal"
    fig = run.figure(relayout=False)
    on_screen = set(fig["data"][3]["customdata"])
    effects = {(r["source"], r["target"]): r["effect"] for r in rows}
    drawable = [v for (s, d), v in effects.items()
                if any(key_name(k) == s for k in on_screen) and any(key_name(k) == d for k in on_screen)]
    big = max(abs(v) for v in effects.values())
    assert any(v > 0.05 * big for v in drawable) == (sum(len(tr["x"]) for tr in fig["data"][:3]) > 0)
    assert any(v < -0.05 * big for v in drawable) == (sum(len(tr["x"]) for tr in fig["data"][5:8]) > 0)


def test_a_single_layer_run_is_unchanged_by_the_depth_view(layer_pairs):  # noqa: F811
    g = Generation(layer_pairs[8], PROMPT, SETTINGS)
    steps = g.start()
    while not g.done:
        steps.append(g.step())
    run = _session(g, steps)
    assert not run.layered and all(f.layer is None for s in steps for f in s.features)
    fig = run.figure()
    assert fig["data"][8]["x"] == [] and len({round(z, 3) for z in fig["data"][3]["z"]}) > 2
    assert {r["layer"] for r in run.table()} == {8}
    assert all(isinstance(k, int) and k < (1 << 24) for k in fig["data"][3]["customdata"])
    run.edge_kind = "virtual"  # falls back to NPMI with one layer
    assert run.figure(relayout=False)["data"][:3] == fig["data"][:3]


def test_graph_selects_pairs_by_membership_like_isin():
    g = GraphState()
    rng = np.random.default_rng(0)
    for p in range(40):
        feats = rng.choice(200, size=6, replace=False)
        g.add_step(TokenStep(p, 0, "x", True, tuple(FeatureHit(int(i), float(rng.random()) + 0.1) for i in feats)))
    among = rng.choice(200, size=50, replace=False)
    a, b, count, weight = g._edges.columns(among)
    all_a, all_b, _, _ = g._edges.columns()
    want = np.isin(all_a, among) & np.isin(all_b, among)
    assert sorted(zip(a.tolist(), b.tolist())) == sorted(zip(all_a[want].tolist(), all_b[want].tolist()))
    assert len(a) > 0
    assert len(g._edges.columns(np.array([10**9]))[0]) == 0  # unknown features select nothing



def test_steering_one_layer_shows_downstream_and_leaves_upstream_alone(layer_pairs):  # noqa: F811
    """Steering the block-8 SAE's feature in a run that reads blocks 2, 5, 8, 11:
    on the prompt (same tokens), layers 2 and 5 are exactly the plain run's,
    layers 8 and 11 move."""
    from axon_core.steering import steering_edit

    extra = [layer_pairs[i] for i in (2, 5, 11)]
    plain = Generation(layer_pairs[8], PROMPT, SETTINGS, extra=extra).start()
    edit = steering_edit(layer_pairs[8].sae, ((3, 40.0),))
    steered = Generation(layer_pairs[8], PROMPT, SETTINGS, edit, extra=extra).start()

    def by_layer(steps, layer):
        return [[(f.index, round(f.activation, 4)) for f in s.features if f.layer == layer] for s in steps]

    assert [s.token_id for s in plain] == [s.token_id for s in steered]
    for layer in (2, 5):
        assert by_layer(plain, layer) == by_layer(steered, layer)
    for layer in (8, 11):
        assert by_layer(plain, layer) != by_layer(steered, layer)


def test_add_to_steering_uses_the_picked_layers_peak(layered_run):
    """In a run of several layers, "Add to steering" scales by the peak of the
    picked SAE's feature (the graph keys it by layer), not by 1."""
    g, steps = layered_run
    run = _session(g, steps)
    hit = next(f for s in steps for f in s.features if f.layer == 8)
    peak = run.graph.node(hit.key).peak
    assert add_steer(run, hit.index, 2, "") == (f"{hit.index}:{2 * peak:.4g}", None)
    assert add_steer(run, 10**6, 2, "1:1") == ("1:1, 1000000:2", None)  # not in the run: 1 unit
