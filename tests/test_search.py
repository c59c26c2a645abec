"""Finding a feature: local full-text search over cached labels, Neuronpedia's search by meaning merged in."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest

from axon_core.catalogue import load_catalogue
from axon_core.generation import GenerationSettings, generate
from axon_core.labels import LabelService
from axon_core.labels.search import SemanticSearch, fts_queries
from axon_core.page.find import find, key_of_found
from axon_core.session import RunSession
from neuronpedia_fake import SEARCH_PATH, FakeNeuronpedia
import polling

NP = "gpt2-small/8-res-jb"
XSS = "<img src=x onerror=alert(1)>"
LABELS = {
    1: "capital letters at the start of a sentence",
    2: "European capitals",
    3: "capitalism and market economics",
    4: "references to France and French places",
    5: "Paris, the capital of France",
    6: "the token 'the' after a comma",
    7: XSS + " capital",
    8: 'quotes "like this" and AND OR NOT * NEAR(x)',
}
HOSTILE = ['"', "'", '""', "*", "AND", "OR NOT", "NEAR(a b)", "col:x", "^start", "{a b}", "a" * 10_000,
           "x'); DROP TABLE labels;--", "\x00\x1b[31m", "capital\"*", "-", "+", "()", "label:", "🙂" * 3000]


wait_for = functools.partial(polling.wait_for, timeout=5.0)


@pytest.fixture
def fake():
    with FakeNeuronpedia() as f:
        yield f


@pytest.fixture(params=["disk", "memory"])
def svc(request, fake, tmp_path):
    if request.param == "disk":
        path = tmp_path / "labels.sqlite"
    else:
        (tmp_path / "file").write_text("x")
        path = tmp_path / "file" / "labels.sqlite"  # not writable: memory only, search scans
    s = LabelService(base_url=fake.url, datasets_url=fake.datasets_url, cache_path=path, rate_per_s=0)
    s.put(NP, LABELS)
    s.put("gpt2-small/6-res-jb", {1: "capital of another layer"})
    yield s
    s.close()


def services_for(svc):
    return SimpleNamespace(labels=svc, catalogue=load_catalogue())


def indices(hits):
    return [i for _, i, _ in hits]


def test_words_and_prefixes_ranked(svc):
    assert svc.store.searchable == (svc.cache_path is not None)
    hits = svc.search([NP], "capital")
    assert set(indices(hits)) == {1, 2, 3, 5, 7}  # the word, and words it begins
    assert set(indices(hits[:3])) == {1, 5, 7}  # the exact word first
    assert indices(svc.search([NP], "fran")) in ([4, 5], [5, 4])
    both = indices(svc.search([NP], "capital france"))
    assert both[0] == 5 and set(both) == {1, 2, 3, 4, 5, 7}  # every word first, then any
    assert indices(svc.search([NP], "CAPITALS")) == [2]
    assert svc.search([NP], "zebra") == []
    assert indices(svc.search([NP, "gpt2-small/6-res-jb"], "another")) == [1]  # the run's SAEs only
    assert svc.search(["gpt2-small/6-res-jb"], "european") == []


def test_a_bulk_batch_is_searchable(fake, tmp_path):
    fake.set_batches("gpt2-small/4-res-jb", [[(10, "numbers in tables"), (11, "tablespoons")]])
    with LabelService(base_url=fake.url, datasets_url=fake.datasets_url, cache_path=tmp_path / "l.sqlite") as s:
        s.prefetch("gpt2-small/4-res-jb")
        assert sorted(indices(s.search(["gpt2-small/4-res-jb"], "table"))) == [10, 11]
        s.put("gpt2-small/4-res-jb", {10: "chairs"})  # a label replaced: the index follows
        assert indices(s.search(["gpt2-small/4-res-jb"], "table")) == [11]
        assert indices(s.search(["gpt2-small/4-res-jb"], "chair")) == [10]
    with LabelService(cache_path=tmp_path / "l.sqlite", enabled=False) as again:  # a restart
        assert indices(again.search(["gpt2-small/4-res-jb"], "tablesp")) == [11]


def test_hostile_queries_never_error(svc):
    for q in HOSTILE + [None, 42, ""]:
        hits = svc.search([NP], q)
        assert isinstance(hits, list)
        found = find(services_for(svc), None, q, ask=False)
        assert isinstance(found.rows, list) and isinstance(found.note, str)
    assert all(fts_queries(q) is None or '"' not in fts_queries(q)[0].replace('" "', "").strip('"')
               for q in HOSTILE)
    assert indices(svc.search([NP], 'capital"*')) == indices(svc.search([NP], "capital"))


def test_semantic_results_merged_when_neuronpedia_answers(svc, fake):
    fake.search_results["where is paris"] = [(NP, 900, "Capital cities in Europe", 0.81),
                                            (NP, 5, "Paris (semantic)", 0.7),
                                            ("gpt2-small/0-res-jb", 3, "another SAE", 0.9)]
    services = services_for(svc)
    first = find(services, None, "where is paris")
    assert [r["feature"] for r in first.rows] == [5] and first.waiting  # local at once
    assert wait_for(lambda: not find(services, None, "where is paris").waiting)
    merged = find(services, None, "where is paris")
    assert [(r["feature"], r["source"]) for r in merged.rows] == [(5, "cached"), (900, "Neuronpedia")]
    assert merged.rows[1]["label"] == "Capital cities in Europe" and merged.rows[0]["layer"] == 8
    path, body = fake.bodies[-1]
    assert path == SEARCH_PATH and body == {"modelId": "gpt2-small", "layers": ["8-res-jb"],
                                            "query": "where is paris", "offset": 0}
    find(services, None, "where is paris")  # cached: not asked again
    assert fake.requests[SEARCH_PATH] == 1


def test_semantic_search_is_debounced_and_within_the_rate_limit(fake):
    client = LabelService(base_url=fake.url, cache_path=None, enabled=False).client
    sem = SemanticSearch(client, per_hour=3, debounce=0.2)
    for q in ["fra", "fran", "franc", "france"]:  # typed within the debounce: the last one only
        assert sem.ask([NP], q) == "queued"
    assert wait_for(lambda: sem.peek([NP], "france") is not None)
    assert fake.requests[SEARCH_PATH] == 1 and fake.bodies[-1][1]["query"] == "france"
    for n, q in enumerate(["one query", "two query"], start=2):
        assert sem.ask([NP], q) == "queued"
        # each sent once its debounce is over (waited for, not slept: a busy machine only takes longer)
        assert wait_for(lambda n=n: sem.requests == n and fake.requests[SEARCH_PATH] == n)
        assert fake.bodies[-1][1]["query"] == q
    # 3 sent this hour: the next ones are refused in the caller's thread, before anything is
    # queued (so nothing can be sent later), however often they are asked
    assert [sem.ask([NP], q) for q in ("three query", "four query", "four query")] == ["rate limited"] * 3
    assert fake.requests[SEARCH_PATH] == 3 == sem.requests
    sem.close()


def test_a_429_pauses_semantic_search(svc, fake):
    fake.search_limit = 0  # Neuronpedia answers 429 with its body
    services = services_for(svc)
    find(services, None, "capital letters")
    assert wait_for(lambda: svc.semantic.error is not None)
    assert "rate limit" in svc.semantic.error
    again = find(services, None, "capital cities")
    assert [r["source"] for r in again.rows] and not again.waiting
    assert "paused" in again.note
    assert fake.requests[SEARCH_PATH] == 1


def test_offline_with_nothing_cached_says_how_to_prefetch(tmp_path):
    with LabelService(base_url="http://127.0.0.1:9", datasets_url="http://127.0.0.1:9",
                      cache_path=tmp_path / "l.sqlite") as s:
        found = find(services_for(s), None, "france")
        assert found.rows == []
        assert "python -m axon_core.labels prefetch gpt2-small/8-res-jb" in found.note
        assert wait_for(lambda: s.semantic.error is not None)
        assert "cached labels only" in find(services_for(s), None, "france").note


def test_results_say_whether_and_how_strongly_they_fired(pair, svc):
    settings = GenerationSettings(max_new_tokens=4, seed=1, stop_at_eos=False)
    meta = {"model": "gpt2-small", "release": "gpt2-small-res-jb", "sae_id": pair.hook_name,
            "neuronpedia_id": NP, "prompt": "The capital of France is"}
    run = RunSession(meta, settings, svc, frame_interval=0.0)
    steps = list(generate(pair, "The capital of France is", settings))
    for step in steps:
        run.add(step)
    fired = steps[-1].features[0].index
    peak = max(f.activation for s in steps for f in s.features if f.index == fired)
    never = next(i for i in range(10_000) if all(f.index != i for s in steps for f in s.features))
    svc.put(NP, {fired: "zebra stripes " + XSS, never: "zebra crossings"})
    found = find(services_for(svc), run, "zebra", ask=False)
    by_index = {r["feature"]: r for r in found.rows}
    assert by_index[fired]["fired"] == "yes" and by_index[fired]["peak"] == pytest.approx(peak, abs=1e-3)
    assert by_index[never]["fired"] == "no" and by_index[never]["peak"] == 0
    assert by_index[fired]["label"] == "zebra stripes " + XSS  # raw text: the table renders it as text
    assert key_of_found(run, [8, fired]) == fired and key_of_found(run, [8, never]) is None


def test_the_page_handler_and_api_endpoint(app_module):
    """The app's "Find a feature" handler (also the ``find_feature`` API endpoint), offline."""
    handlers = app_module.HANDLERS
    handlers.services.labels.put(NP, {4821: "European capitals", 7: XSS})
    outs = list(handlers.find_feature(None, "capital", "gpt2-small-res-jb", "blocks.8.hook_resid_pre"))
    frame, note = outs[-1]
    assert list(frame.columns) == ["layer", "feature", "label", "fired", "peak", "tokens", "source"]
    assert frame["feature"].tolist() == [4821] and frame["fired"].tolist() == ["no"]
    assert list(handlers.find_feature(None, '"*) OR NEAR(' + "x" * 10_000, None, None))  # no error
    fn_names = {getattr(fn, "api_name", None) for fn in app_module.demo.fns.values()}
    assert "find_feature" in fn_names
