"""A whole run through RunSession: labels in later frames, text, table, inspector, exports."""

import json
import threading
import time

import pytest

from axon_core.export import run_from_json
from axon_core.generation import GenerationSettings, generate
from axon_core.labels import LabelService
from axon_core.session import RunSession
from neuronpedia_fake import FakeNeuronpedia

NP_ID = "gpt2-small/8-res-jb"
XSS = "<img src=x onerror=alert(1)>"
SETTINGS = GenerationSettings(max_new_tokens=20, seed=1, stop_at_eos=False)


def _meta(pair):
    return {"model": "gpt2-small", "release": "gpt2-small-res-jb", "sae_id": pair.hook_name,
            "neuronpedia_id": NP_ID, "prompt": "The capital of France is"}


def _labels_for_all(n):
    return {(NP_ID, i): (XSS if i % 7 == 0 else f"concept {i}") for i in range(n)}


def _run(pair, labels):
    run = RunSession(_meta(pair), SETTINGS, labels, frame_interval=0.0)
    t = time.perf_counter()
    for step in generate(pair, "The capital of France is", SETTINGS):
        run.add(step)
        run.table()  # what a frame reads
        run.text_html()
    return run, time.perf_counter() - t


@pytest.fixture()
def slow_labels(tmp_path, pair):
    """A label service whose Neuronpedia holds every request unanswered until ``fake.let_go()``."""
    with FakeNeuronpedia(labels=_labels_for_all(pair.sae.cfg.d_sae)) as fake:
        fake.mode = "hold"
        svc = LabelService(base_url=fake.url, datasets_url=fake.datasets_url,
                           cache_path=tmp_path / "labels.sqlite", rate_per_s=0)
        yield svc, fake
        fake.let_go()
        svc.close()


class _Counted:
    """Wraps a LabelService and counts (and times, for the printout) its callers' calls."""

    def __init__(self, svc):
        self.svc, self.seconds, self.calls = svc, 0.0, 0

    def __getattr__(self, name):
        method = getattr(self.svc, name)

        def counted(*args, **kwargs):
            t = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.calls += 1
                self.seconds += time.perf_counter() - t

        return counted


def test_slow_label_server_does_not_slow_generation(pair, slow_labels, tmp_path):
    """A whole 20-token run, every frame's table and text built, ends while
    Neuronpedia holds every label request unanswered: nothing in generation waits
    on a label (a run that did would never end). Its tokens and features are those
    of a run without labels."""
    svc, fake = slow_labels
    off = LabelService(enabled=False, cache_path=tmp_path / "off.sqlite")
    base, base_s = _run(pair, off)
    counted = _Counted(svc)
    done: list = []
    worker = threading.Thread(target=lambda: done.append(_run(pair, counted)), daemon=True)
    worker.start()
    worker.join(120)
    assert not worker.is_alive() and done, "the run waited on a label request that was never answered"
    run, slow_s = done[0]
    print(f"20-token run: {1e3 * base_s:.0f} ms without labels, {1e3 * slow_s:.0f} ms with a held label "
          f"server; {counted.calls} label calls, {1e3 * counted.seconds:.1f} ms inside the label service")
    assert fake.wait_held(1)  # the fetches really went out, and are still unanswered
    network = {f.index for s in run.steps for f in s.features}
    assert fake.count("/api/feature/") <= len(network)  # each feature asked for once at most
    assert counted.calls > 0
    assert [(s.token_id, [f.index for f in s.features]) for s in run.steps] == \
        [(s.token_id, [f.index for f in s.features]) for s in base.steps]
    assert all(r["label"] == f"Feature {r['feature']}" for r in run.table())  # numbers, while held


def test_labels_arrive_in_later_frames(pair, slow_labels):
    """A frame never waits for a label: the first frame of a run shows the
    feature's number; once Neuronpedia answers (let go by the test), the view notices
    (labels_changed) and a later frame shows the label, in the scene and the table."""
    import orjson

    from axon_core.engine import Engine

    svc, fake = slow_labels
    engine = Engine()
    try:
        live = engine.submit(pair, "Labels come later", GenerationSettings(max_new_tokens=4, seed=3))
        view = RunSession(_meta(pair), live.settings, svc)
        view.follow(live)
        while not view.caught_up:
            live.wait(len(view.steps), 0.05)
            view.sync()
        view.labels_changed()

        def shown():
            fig = orjson.loads(view.figure_json())
            return ({a["name"]: a["text"] for a in fig["layout"]["scene"]["annotations"]},
                    {r["feature"]: r["label"] for r in view.table()})

        scene, table = shown()
        top = view.steps[-1].features[0].index
        assert fake.wait_held(1)  # asked, unanswered
        assert scene[str(top)] == f"Feature {top}" and table[top] == f"Feature {top}"  # first frame: absent
        fake.let_go()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (view.labels_changed() and
                                                   not shown()[1][top].startswith("Feature ")):
            time.sleep(0.02)
        scene, table = shown()  # a later frame
        assert table[top] == _labels_for_all(pair.sae.cfg.d_sae)[(NP_ID, top)]
        from axon_core.figure import SCENE_LABEL_CHARS, plotly_text

        assert scene[str(top)] == plotly_text(table[top], SCENE_LABEL_CHARS)  # inert text in the scene
    finally:
        engine.release(live)
        engine.close()


def test_labels_are_text_everywhere(pair, tmp_path):
    svc = LabelService(enabled=False, cache_path=tmp_path / "l.sqlite")
    run = RunSession(_meta(pair), SETTINGS, svc, frame_interval=0.0)
    steps = list(generate(pair, "The capital of France is", SETTINGS))
    svc.put(NP_ID, {f.index: XSS for s in steps for f in s.features})
    for s in steps:
        run.add(s)
    assert any(r["label"] == XSS for r in run.table())  # raw text: the table renders text
    page = run.text_html()
    assert XSS not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    fig = run.figure_json()
    assert "<img" not in fig and "&lt;img" in fig
    standalone = run.export_html()
    assert "<img src=x" not in standalone


def test_standalone_page_zooms_in_and_shows_whole_characters(pair):
    """The exported page: the same figure with the camera closer (the app's own
    figure unchanged) and a character split across tokens shown once."""
    import orjson

    from axon_core.session import EXPORT_ZOOM

    run = RunSession(_meta(pair), SETTINGS, None, frame_interval=0.0)
    for s in generate(pair, "Brains 🧠 think", SETTINGS):
        run.add(s)
    fig = run.figure()
    page = run.export_html()
    embedded = orjson.loads(page.split('id="axon-figure">', 1)[1].split("</script>", 1)[0])
    eye, app_eye = embedded["layout"]["scene"]["camera"]["eye"], fig["layout"]["scene"]["camera"]["eye"]
    assert eye == {k: round(v * EXPORT_ZOOM, 3) for k, v in app_eye.items()} and EXPORT_ZOOM < 1
    assert app_eye == run.figure(relayout=False)["layout"]["scene"]["camera"]["eye"]  # the app's view as it was
    assert embedded["data"] == json.loads(json.dumps(fig["data"]))
    text = page.split('<div id="text">', 1)[1].split("</div>", 1)[0]
    assert "Brains 🧠 think" in text and "\ufffd" not in text


def test_inspector_and_export_round_trip(pair, tmp_path):
    run = RunSession(_meta(pair), SETTINGS, None, frame_interval=0.0)
    steps = list(generate(pair, "The capital of France is", SETTINGS))
    for s in steps:
        run.add(s)
    top = run.table()[0]["feature"]
    info = run.inspector(top, lambda t: pair.model.tokenizer.decode([t]))
    assert info["url"] == f"https://www.neuronpedia.org/{NP_ID}/{top}"
    assert len(info["history"]) == info["tokens"] >= 1
    assert all(n["co_fired"] >= 1 for n in info["neighbours"])
    assert run.inspector(10**9) is None
    data = json.loads(json.dumps(run.export_json({"torch": "x"})))
    back, settings, meta = run_from_json(data)
    assert back == steps and settings == SETTINGS and meta["neuronpedia_id"] == NP_ID
    assert run.ms_per_token() is not None


def test_frames_are_throttled(pair):
    run = RunSession(_meta(pair), SETTINGS, None, frame_interval=0.25)
    assert run.frame_due(now=10.0)
    assert not run.frame_due(now=10.1)
    assert run.frame_due(now=10.3)
