"""The live graph's delta log (axon_core/deltas.py): what the page's player is sent.

The reference is the full render of the same frame (the session's Scene, as
``figure_dict`` draws it): a log decoded as the player applies it
(``PlayerState``) must draw the same nodes, positions, activations, rings,
names and edges, after every frame and after a scrub; and each frame's new
bytes must be far below a full figure's.
"""

from __future__ import annotations

import orjson
import pytest

from axon_core.deltas import HEADER, PlayerState, lines_of, scene_drawn
from axon_core.generation import GenerationSettings
from axon_core.session import RunSession

from steps_factory import random_steps


def _run(**kw) -> RunSession:
    return RunSession({"neuronpedia_id": None}, GenerationSettings(), None, frame_interval=0, **kw)


def _same(drawn: dict, want: dict) -> None:
    assert set(drawn["nodes"]) == set(want["nodes"])
    for name, xyz in want["nodes"].items():
        assert drawn["nodes"][name] == pytest.approx(xyz, abs=1e-3), name
        assert drawn["activation"][name] == pytest.approx(want["activation"][name], abs=0.02), name
    assert drawn["ring"] == want["ring"]
    assert drawn["names"] == want["names"]
    assert drawn["edges"] == want["edges"]


def test_a_streamed_log_draws_what_a_full_render_draws():
    run = _run()
    sizes, full = [], []
    steps = random_steps(120, n_features=900, k=12, seed=3)
    for k, s in enumerate(steps):
        run.add(s)
        if k % 4 == 3:
            before = len(run.stream.log)
            log = run.graph_log(final=k == len(steps) - 1)
            sizes.append(len(log) - before)
            full.append(len(run.figure_json(relayout=False)))
    log = run.graph_log(final=True)
    state = PlayerState.of(log)
    _same(state.drawn(), scene_drawn(run.scene(relayout=False)))
    assert len(state.drawn()["nodes"]) == 300  # the cap: nodes beyond it were un-drawn ("u")
    assert any("u" in d for d in lines_of(log))
    # nodes already placed that drift are sent as steps ("d"), smaller numbers than positions
    drifts = [v for d in lines_of(log) for i, v in enumerate(d.get("d", ())) if i % 4]
    places = [abs(v) for d in lines_of(log) for i, v in enumerate(d.get("m", ())) if i % 4]
    assert drifts and sorted(map(abs, drifts))[len(drifts) // 2] < sorted(places)[len(places) // 2] / 4
    # a frame's new bytes are a small part of a full figure's (after the first frames)
    later = sorted(sizes[5:])
    assert later[len(later) // 2] < 0.3 * sorted(full)[len(full) // 2], (later, full)


def test_positions_are_exact_after_the_last_frame_and_within_a_pixel_before():
    run = _run()
    for s in random_steps(40, n_features=200, seed=1):
        run.add(s)
        run.graph_log()
    scene = run.scene(relayout=False)
    mid = PlayerState.of(run.stream.log).drawn()["nodes"]
    pixel = 2 * scene.half / 700
    for name, xyz in scene_drawn(scene)["nodes"].items():
        assert max(abs(a - b) for a, b in zip(mid[name], xyz)) <= pixel + 1e-3
    state = PlayerState.of(run.graph_log(relayout=False, final=True))
    _same(state.drawn(), scene_drawn(scene))


def test_a_scrub_starts_a_new_epoch_with_the_full_state_at_that_token():
    run = _run()
    for s in random_steps(30, n_features=150, seed=2):
        run.add(s)
    first = run.graph_log()
    run.scrub(12)
    log = run.graph_log(relayout=False)
    assert not log.startswith(first) and log.startswith(HEADER)  # a new header: the page resets
    state = PlayerState.of(log)
    assert state.p == 12 and max(d["p"] for d in lines_of(log) if "p" in d) == 12  # nothing after the token
    _same(state.drawn(), scene_drawn(run.scene(relayout=False)))
    run.scrub(None)  # back to following the run: the full state again
    back = PlayerState.of(run.graph_log(relayout=False))
    assert back.p == 30
    _same(back.drawn(), scene_drawn(run.scene(relayout=False)))


def test_the_log_only_grows_within_an_epoch_and_an_edge_kind_is_a_delta():
    run = _run()
    logs = []
    for s in random_steps(24, n_features=120, seed=4):
        run.add(s)
        logs.append(run.graph_log())
    assert all(b.startswith(a) for a, b in zip(logs, logs[1:]))  # Gradio sends each as an append
    run.edge_kind = "cooccurrence"
    log = run.graph_log(relayout=False)
    assert log.startswith(logs[-1])
    _same(PlayerState.of(log).drawn(), scene_drawn(run.scene(relayout=False)))


def test_labels_arrive_as_label_deltas_and_hostile_text_stays_data():
    class Labels:
        arrivals = 0
        known_ = {}

        def label(self, np_id, index):
            return self.known_.get(index, f"Feature {index}")

        def known(self, np_id, index):
            return self.known_.get(index)

        def request(self, np_id, indices):
            pass

    labels = Labels()
    run = RunSession({"neuronpedia_id": "gpt2-small/8-res-jb"}, GenerationSettings(), labels, frame_interval=0)
    steps = random_steps(10, n_features=40, seed=5)
    for s in steps:
        run.add(s)
    run.graph_log()
    first = steps[-1].features[0].index
    labels.known_[first] = '<img src=x onerror="alert(1)"> France'
    labels.arrivals += 1
    log = run.graph_log()
    last = list(lines_of(log))[-1]
    assert [lab for _, lab in last["l"]] == ['<img src=x onerror="alert(1)"> France']
    assert PlayerState.of(log).drawn()["labels"][f"#{first}"].endswith("France")
    # every line is one JSON object: a label cannot break out of its line
    assert all(isinstance(orjson.loads(x), dict) for x in log.splitlines()[1:])


def test_a_layered_run_carries_its_planes_and_layers():
    from axon_core.features import node_key

    run = _run()
    run.plane_of = {2: -1.0, 8: 1.0}
    run.layered = True
    run.stream.__init__(run.graph.decay, run.planes())
    from steps_factory import step
    run.add(step(1, [(node_key(2, 5), 3.0), (node_key(8, 9), 2.0)]))
    log = run.graph_log()
    head = orjson.loads(log.splitlines()[0].split(" ", 1)[1])
    assert head["planes"] == [[-1.0, "layer 2"], [1.0, "layer 8"]]
    new = list(lines_of(log))[0]["n"]
    assert sorted(n[2] for n in new) == [2, 8]


def test_the_watch_list_is_marked_where_its_features_are_nodes():
    run = _run()
    steps = random_steps(12, n_features=60, seed=6)
    for s in steps:
        run.add(s)
    fired = steps[3].features[0].index
    run.watched_keys = (fired, 10_000)  # one that fired, one that never did (no node to mark)
    state = PlayerState.of(run.graph_log())
    marked = [d for d in lines_of(run.stream.log) if "w" in d][-1]["w"]
    assert [state.name[n] for n in marked] == [f"#{fired}"]
