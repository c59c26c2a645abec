"""The token × feature heatmap and token highlighting."""

from axon_core.generation import GenerationSettings
from axon_core.session import RunSession
from axon_core.timeline import timeline_figure
from steps_factory import step


def _steps():
    return [step(1, [(7, 2.0), (9, 1.0)]), step(2, [(9, 3.0)]), step(3, [(11, 0.5), (7, 4.0)])]


def test_heatmap_cells_are_activations_by_token_and_feature():
    fig = timeline_figure(_steps(), lambda i: f"<b>f{i}</b>", n_features=2)
    heat = fig["data"][0]
    assert heat["type"] == "heatmap"
    # Strongest by peak first: 7 (4.0), then 9 (3.0); 11 is cut by n_features.
    assert heat["z"] == [[2.0, 0.0, 4.0], [1.0, 3.0, 0.0]]
    assert heat["customdata"][0] == [1, 2, 3]
    assert "<b>" not in str(fig) and "&lt;b&gt;" in heat["text"][0][0]


def test_clicking_a_token_rings_its_features_in_the_graph():
    run = RunSession({"neuronpedia_id": None}, GenerationSettings(), None)
    for s in _steps():
        run.add(s)
    active = next(t for t in run.figure()["data"] if t["name"] == "active")
    assert sorted(active["customdata"]) == [7, 11]  # the latest token
    run.scrub(2)  # a click on token 2 shows the graph as it was then
    active = next(t for t in run.figure(relayout=False)["data"] if t["name"] == "active")
    assert active["customdata"] == [9]
    shapes = run.timeline()["layout"]["shapes"]
    assert shapes and shapes[0]["x0"] == 0.5  # column of position 2
