"""Names from the first run: the default SAE's labels come in bulk at start-up, a loaded SAE's on load,
and while they travel the features on screen are asked for first (issue 22, item 0)."""

from __future__ import annotations

import functools
import threading

import pytest

from axon_core.generation import GenerationSettings, generate
from axon_core.labels import LabelService
from axon_core.page import picker
from axon_core.page.services import Services
from axon_core.session import RunSession
from neuronpedia_fake import FakeNeuronpedia
import polling

NP = "gpt2-small/8-res-jb"
NP5 = "gpt2-small/5-res-jb"
PROMPT = "The capital of France is"
SETTINGS = GenerationSettings(max_new_tokens=6, seed=1, stop_at_eos=False)


wait_for = functools.partial(polling.wait_for, timeout=10.0)


def batches(np_id: str, d_sae: int, size: int = 64) -> list[list[tuple[int, str]]]:
    return [[(i, f"{np_id} concept {i}") for i in range(b, min(b + size, d_sae))] for b in range(0, d_sae, size)]


@pytest.fixture(scope="module")
def started(pair, tmp_path_factory):
    """Services.start on an empty cache, the bucket holding its answers until the test lets it go."""
    d_sae = pair.sae.cfg.d_sae
    with FakeNeuronpedia(batches={NP: batches(NP, d_sae), NP5: batches(NP5, d_sae)}) as fake:
        gate = fake.gate["/datasets/"] = threading.Event()
        env = {"AXON_LABEL_CACHE": str(tmp_path_factory.mktemp("names") / "labels.sqlite"),
               "AXON_NEURONPEDIA_URL": fake.url, "AXON_NEURONPEDIA_DATASETS_URL": fake.datasets_url}
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            services = Services.start()
        yield services, fake, gate, d_sae
        gate.set()
        services.engine.close()
        services.labels.close()


def test_bulk_starts_at_startup_without_blocking_the_first_run(started):
    services, fake, gate, d_sae = started
    labels = services.labels
    assert labels.bulk_state(NP) in ("queued", "running")  # begun by Services.start, not by a visitor
    assert wait_for(lambda: fake.count("/datasets/") >= 1)  # it asked the bucket (which holds its answer)
    pair = services.pairs.get("gpt2-small-res-jb", "blocks.8.hook_resid_pre")
    live = services.engine.submit(pair, PROMPT, SETTINGS)
    assert wait_for(lambda: live.finished, timeout=120)
    assert live.state == "done" and len(live.steps) > 6
    assert labels.bulk_state(NP) == "running"  # the run did not wait for it
    gate.set()
    assert wait_for(lambda: labels.bulk_state(NP) == "done", timeout=20)
    assert [labels.known(NP, i) for i in (0, d_sae // 2, d_sae - 1)] == [
        f"{NP} concept {i}" for i in (0, d_sae // 2, d_sae - 1)]
    assert fake.count(f"/api/feature/{NP}/") == 0  # the run's features came with the bulk, not one by one


def test_loaded_sae_bulk_starts_on_load(started):
    services, fake, gate, d_sae = started
    gate.set()
    assert services.labels.bulk_state(NP5) is None
    line, warning = picker.load_choice(services, "gpt2-small-res-jb", "blocks.5.hook_resid_pre")
    assert warning is None
    assert services.labels.bulk_state(NP5) in ("queued", "running", "done")
    assert wait_for(lambda: services.labels.bulk_state(NP5) == "done", timeout=20)
    assert fake.requests[fake.batch_path(NP5, 0)] == 1
    assert services.labels.known(NP5, 3) == f"{NP5} concept 3"


def test_a_runs_visible_labels_are_fetched_first(pair, tmp_path):
    """The scene's names and the table's rows reach Neuronpedia before every other feature of the run."""
    d_sae = pair.sae.cfg.d_sae
    with FakeNeuronpedia(labels={(NP, i): f"concept {i}" for i in range(d_sae)}) as fake:
        gate = fake.gate["/api/"] = threading.Event()  # answers held: every wish queues up
        svc = LabelService(base_url=fake.url, datasets_url=fake.datasets_url, cache_path=tmp_path / "l.sqlite",
                           rate_per_s=0, max_workers=1)
        meta = {"model": "gpt2-small", "release": "gpt2-small-res-jb", "sae_id": pair.hook_name,
                "neuronpedia_id": NP, "prompt": PROMPT}
        run = RunSession(meta, SETTINGS, svc, frame_interval=0.0)
        for step in generate(pair, PROMPT, SETTINGS):
            run.add(step)  # each step asks for all its features, in the background
        assert wait_for(lambda: fake.count("/api/feature/") == 1)  # one is on its way
        fig = run.figure()  # a frame: the scene's names ...
        named = [int(a["name"]) for a in fig["layout"]["scene"]["annotations"] if a["name"].isdigit()]
        rows = [r["feature"] for r in run.table()]  # ... and the table's rows
        shown = list(dict.fromkeys(rows + named))
        everything = {f.index for s in run.steps for f in s.features}
        assert len(named) == 8 and len(everything) > len(shown) + 5
        gate.set()
        assert wait_for(lambda: svc.status()["in_flight"] == 0, timeout=30)
        order = [int(p.rsplit("/", 1)[1]) for _, p in fake.arrivals]
        first = order[1:1 + len(shown)]
        assert set(first) == set(shown) - set(order[:1])  # before any other feature of the run
        assert first[:len(rows)] == [i for i in rows if i != order[0]][:len(first)]  # the table's order
        assert set(order) == everything  # then the rest
        svc.close()


def test_a_run_of_several_layers_fetches_each_layers_labels_in_bulk(started, offline_hub):
    """A run reading layers 2, 8 and 11 starts the bulk download of the two SAEs not loaded before."""
    from axon_core.page.run import Frame, run_frames
    from tests.test_depth import _write_missing_saes

    services, fake, gate, d_sae = started
    gate.set()
    _write_missing_saes(offline_hub)
    others = ["gpt2-small/2-res-jb", "gpt2-small/11-res-jb"]
    for np_id in others:
        fake.set_batches(np_id, batches(np_id, d_sae))
        assert services.labels.bulk_state(np_id) is None
    frames = [x for x in run_frames(services, PROMPT, "gpt2-small", "gpt2-small-res-jb", "blocks.8.hook_resid_pre",
                                    1.0, 0, 1.0, 1.0, 3, 1, 8, 0.1, "", "npmi", None, [2, 8, 11])
              if isinstance(x, Frame)]
    assert sorted(frames[-1].run.by_layer) == [2, 8, 11]
    for np_id in others:
        assert wait_for(lambda: services.labels.bulk_state(np_id) == "done", timeout=20)
        assert fake.requests[fake.batch_path(np_id, 0)] == 1
        assert services.labels.known(np_id, 3) == f"{np_id} concept 3"
