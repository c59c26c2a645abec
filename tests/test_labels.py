"""Tests of axon_core.labels against a local fake Neuronpedia (tests/neuronpedia_fake.py)."""

from __future__ import annotations

import functools
import os
import sqlite3
import subprocess
import sys
import threading
import time
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from neuronpedia_fake import FakeNeuronpedia  # noqa: E402
import polling

from axon_core.labels import LabelService, PrefetchError, safe_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NP = "gpt2-small/8-res-jb"
BULK = "gpt2-small/6-res-jb"
XSS = "<img src=x onerror=alert(1)>"
LABELS = {
    (NP, 5): "European capitals",
    (NP, 6): None,  # exists, no explanations
    (NP, 7): XSS,
    (NP, 8): ["best first", "second best"],
    **{(NP, i): f"label {i}" for i in range(100, 160)},
}
BATCHES = [
    [(i, f"bulk {i}") for i in range(0, 10)] + [(3, "a later duplicate")],
    [(i, f"bulk {i}") for i in range(10, 20)],
    [(i, f"bulk {i}") for i in range(20, 30)],
]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


wait_for = functools.partial(polling.wait_for, timeout=3.0, interval=0.01)


@pytest.fixture
def fake():
    with FakeNeuronpedia(labels=LABELS, batches={BULK: BATCHES}) as f:
        yield f


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make(tmp_path, fake, clock):
    made: list[LabelService] = []

    def _make(**kw) -> LabelService:
        kw.setdefault("base_url", fake.url)
        kw.setdefault("datasets_url", fake.datasets_url)
        kw.setdefault("cache_path", tmp_path / "labels.sqlite")
        kw.setdefault("rate_per_s", 0)  # unlimited unless a test says otherwise
        kw.setdefault("clock", clock)
        svc = LabelService(**kw)
        made.append(svc)
        return svc

    yield _make
    for svc in made:
        svc.close()


def idle(svc: LabelService) -> bool:
    return svc.status()["in_flight"] == 0


def asked_nothing(svc: LabelService, fake, path: str, n: int) -> bool:
    """The call just made scheduled no fetch: label() schedules in the caller's thread
    (the key is in flight before it returns) and the fake counts a request before it
    answers, so nothing in flight now and still ``n`` hits means none was sent, nor
    will be. (Asked in this order: a fetch that ended in between has been counted.)"""
    return idle(svc) and fake.requests[path] == n


# ---- background fetching ------------------------------------------------------


def _returns_while_held(fn, *args):
    """Call ``fn`` in a thread; it must return (and its value is returned) while
    the fake holds every request unanswered. A call that waited on the network
    would still be waiting: the server has not answered, and will not until let go."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive() and out, "the call waited on a label request that was never answered"
    return out[0]


def test_label_arrives_in_background_without_blocking(make, fake):
    fake.mode = "hold"
    svc = make()
    assert _returns_while_held(svc.label, NP, 5) == "Feature 5"
    assert fake.wait_held(1)  # the fetch is out, unanswered, and label() already returned
    assert svc.label(NP, 5) == "Feature 5" and fake.held == 1  # asked again: no second request
    fake.let_go()
    assert wait_for(lambda: svc.label(NP, 5) == "European capitals", timeout=10)
    assert svc.known(NP, 5) == "European capitals"
    assert fake.requests[fake.feature_path(NP, 5)] == 1


def test_hot_loop_overhead_with_slow_server(make, fake, tmp_path):
    """600 label() calls of a token loop, with the server holding every request:
    the loop ends without an answer, each feature fetched once at most (the time
    is printed, not decided on)."""
    fake.mode = "hold"
    features = list(range(100, 130))

    def loop(svc: LabelService) -> tuple[float, set[str]]:
        seen = set()
        t0 = time.perf_counter()
        for _step in range(20):
            for i in features:
                seen.add(svc.label(NP, i))
        return time.perf_counter() - t0, seen

    off_time, off_seen = loop(make(enabled=False, cache_path=tmp_path / "off.sqlite"))
    on = make()
    on_time, on_seen = _returns_while_held(loop, on)
    assert off_seen == on_seen == {f"Feature {i}" for i in features}
    print(f"label() loop: enabled {on_time * 1e3:.1f} ms, disabled {off_time * 1e3:.1f} ms")
    assert fake.wait_held(1)  # it did go to the network
    assert fake.count("/api/feature/") <= len(features)
    assert all(fake.requests[fake.feature_path(NP, i)] <= 1 for i in features)
    fake.let_go()
    assert wait_for(lambda: on.labels(NP, features) == {i: f"label {i}" for i in features}, timeout=20)
    assert all(fake.requests[fake.feature_path(NP, i)] == 1 for i in features)


def test_labels_many_and_request(make, fake):
    svc = make()
    svc.request(NP, [100, 101, 102])
    assert wait_for(lambda: svc.labels(NP, [100, 101, 102]) == {100: "label 100", 101: "label 101", 102: "label 102"})
    assert fake.count("/api/feature/") == 3


def test_first_explanation_is_the_label(make):
    svc = make()
    svc.label(NP, 8)
    assert wait_for(lambda: svc.known(NP, 8) == "best first")


def test_fallbacks_and_negative_cache(make, fake):
    svc = make()
    assert svc.label(None, 3) == "Feature 3"
    assert svc.known(None, 3) is None
    assert svc.label(NP, 6) == "Feature 6"  # no explanations
    assert svc.label(NP, 999) == "Feature 999"  # 404
    assert wait_for(lambda: idle(svc) and fake.count("/api/feature/") == 2)
    for _ in range(10):
        assert svc.label(NP, 6) == "Feature 6"
        assert svc.label(NP, 999) == "Feature 999"
        assert svc.label(None, 3) == "Feature 3"
    assert asked_nothing(svc, fake, fake.feature_path(NP, 6), 1)
    assert fake.requests[fake.feature_path(NP, 999)] == 1
    assert fake.count() == 2  # nothing at all for np_id=None
    assert svc.status()["failures"] == 0


def test_backoff_after_server_error(make, fake, clock):
    fake.mode = "error"
    svc = make()
    path = fake.feature_path(NP, 5)
    assert svc.label(NP, 5) == "Feature 5"
    assert wait_for(lambda: fake.requests[path] == 1 and idle(svc))
    for _ in range(20):
        assert svc.label(NP, 5) == "Feature 5"
    clock.advance(4.0)
    svc.label(NP, 5)
    assert asked_nothing(svc, fake, path, 1)  # still inside the 5 s window
    st_ = svc.status()
    assert st_["failures"] == 1 and "500" in st_["last_error"] and st_["backing_off"] == 1
    assert "unreachable" in st_["message"]

    clock.advance(1.5)  # past 5 s: one retry (fails again, window doubles to 10 s)
    svc.label(NP, 5)
    assert wait_for(lambda: fake.requests[path] == 2 and idle(svc))
    fake.mode = "normal"
    clock.advance(6.0)
    svc.label(NP, 5)
    assert asked_nothing(svc, fake, path, 2)  # 6 s < 10 s
    clock.advance(5.0)
    svc.label(NP, 5)
    assert wait_for(lambda: svc.known(NP, 5) == "European capitals")
    assert fake.requests[path] == 3
    st_ = svc.status()
    assert st_["backing_off"] == 0 and st_["reachable"] is True and st_["message"] is None


def test_429_retry_after_pauses_all_fetches(make, fake, clock):
    fake.mode, fake.retry_after = "ratelimit", "30"
    svc = make()
    svc.label(NP, 5)
    assert wait_for(lambda: fake.count("/api/") == 1 and idle(svc))
    assert 29 <= svc.status()["paused_for"] <= 30
    assert "rate limit" in svc.status()["message"]
    fake.mode = "normal"
    for i in range(100, 110):
        assert svc.label(NP, i) == f"Feature {i}"
    clock.advance(20)
    svc.label(NP, 5)
    assert idle(svc) and fake.count("/api/") == 1  # paused globally, for other features too (as asked_nothing)
    clock.advance(11)
    assert wait_for(lambda: svc.label(NP, 100) == "label 100" and svc.label(NP, 5) == "European capitals")


@pytest.mark.parametrize("mode", ["garbage", "close"])
def test_bad_answers_give_fallback_and_status(make, fake, mode):
    fake.mode = mode
    svc = make()
    assert svc.label(NP, 5) == "Feature 5"
    assert wait_for(lambda: fake.count("/api/") == 1 and idle(svc))
    assert svc.label(NP, 5) == "Feature 5"
    st_ = svc.status()
    assert st_["failures"] == 1 and st_["reachable"] is False and st_["last_error"]
    assert st_["message"].startswith("Neuronpedia unreachable")


def test_timeout_is_a_failure(make, fake):
    fake.mode, fake.delay = "slow", 1.0
    svc = make(timeout=0.2)
    svc.label(NP, 5)
    assert wait_for(lambda: svc.status()["failures"] == 1, timeout=2.0)
    assert svc.label(NP, 5) == "Feature 5"
    assert "timed out" in svc.status()["last_error"].lower()


def test_in_flight_deduplication(make, fake):
    fake.mode, fake.delay = "slow", 1.0
    svc = make()
    barrier = threading.Barrier(50)
    results: list[str] = []

    def call() -> None:
        barrier.wait()
        results.append(svc.label(NP, 5))

    threads = [threading.Thread(target=call) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["Feature 5"] * 50
    assert wait_for(lambda: svc.known(NP, 5) == "European capitals", timeout=2.5)
    assert fake.requests[fake.feature_path(NP, 5)] == 1


def test_rate_cap_spreads_requests(make, fake):
    svc = make(rate_per_s=20, burst=1, max_workers=4)
    svc.request(NP, range(100, 130))
    assert wait_for(lambda: all(svc.known(NP, i) for i in range(100, 130)), timeout=4.0)
    times = sorted(t for t, p in fake.arrivals if p.startswith("/api/feature/"))
    assert len(times) == 30
    assert times[-1] - times[0] >= 0.85 * 29 / 20
    assert all(times[k + 10] - times[k] >= 0.8 * 10 / 20 for k in range(len(times) - 10))


def test_api_key_header(make, fake, monkeypatch):
    monkeypatch.setenv("NEURONPEDIA_API_KEY", "s3cret")
    svc = make()
    svc.label(NP, 5)
    assert wait_for(lambda: svc.known(NP, 5) is not None)
    assert fake.headers[fake.feature_path(NP, 5)]["x-api-key"] == "s3cret"


def test_env_configuration(monkeypatch, fake, tmp_path):
    monkeypatch.setenv("AXON_NEURONPEDIA_URL", fake.url)
    monkeypatch.setenv("AXON_LABEL_CACHE", str(tmp_path / "env.sqlite"))
    monkeypatch.setenv("AXON_NEURONPEDIA_RATE", "7")
    monkeypatch.delenv("NEURONPEDIA_API_KEY", raising=False)
    with LabelService() as svc:
        assert svc.base_url == fake.url and svc.cache_path == tmp_path / "env.sqlite"
        assert svc._bucket.rate == 7.0
        svc.label(NP, 5)
        assert wait_for(lambda: svc.known(NP, 5) == "European capitals")
        assert "x-api-key" not in fake.headers[fake.feature_path(NP, 5)]


# ---- the cache ------------------------------------------------------------------


def test_cache_survives_restart(make, fake, tmp_path):
    svc = make()
    svc.request(NP, [5, 6])
    assert wait_for(lambda: svc.known(NP, 5) and idle(svc) and fake.count("/api/") == 2)
    svc.close()
    fake.stop()
    again = make()  # same URL, nothing listens there any more
    assert again.label(NP, 5) == "European capitals"  # first call, from disk
    assert again.label(NP, 6) == "Feature 6"  # negative cache, no fetch scheduled
    assert again.status()["in_flight"] == 0 and again.status()["failures"] == 0


def test_corrupt_file_is_moved_aside(make, tmp_path):
    path = tmp_path / "labels.sqlite"
    garbage = b"this is not a sqlite database\x00" * 200
    path.write_bytes(garbage)
    with pytest.warns(RuntimeWarning, match="moved it to"):
        svc = make(cache_path=path)
    aside = list(tmp_path.glob("labels.sqlite.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == garbage
    assert svc.status()["persistent"] is True
    svc.label(NP, 5)
    assert wait_for(lambda: svc.known(NP, 5) == "European capitals")
    with sqlite3.connect(path) as con:
        assert con.execute("SELECT label FROM labels WHERE idx = 5").fetchone() == ("European capitals",)


def test_unwritable_location_falls_back_to_memory(make, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    svc = make(cache_path=blocker / "labels.sqlite")  # parent is a file: can't be created
    st_ = svc.status()
    assert st_["persistent"] is False and "memory only" in st_["message"]
    svc.label(NP, 5)
    assert wait_for(lambda: svc.label(NP, 5) == "European capitals")


def test_two_processes_write_at_once(tmp_path):
    path = tmp_path / "shared.sqlite"
    script = (
        "import sys\n"
        "from axon_core.labels import LabelService\n"
        "svc = LabelService(cache_path=sys.argv[1], enabled=False)\n"
        "for i in range(300):\n"
        "    svc.put(sys.argv[2], {i: f'{sys.argv[2]} {i}'})\n"
        "svc.close()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(path), np_id], cwd=ROOT, env=env, stderr=subprocess.PIPE)
        for np_id in ("m/a", "m/b")
    ]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        counts = dict(con.execute("SELECT np_id, COUNT(*) FROM labels WHERE label IS NOT NULL GROUP BY np_id"))
    assert counts == {"m/a": 300, "m/b": 300}
    with LabelService(cache_path=path, enabled=False) as svc:
        assert svc.label("m/a", 299) == "m/a 299" and svc.label("m/b", 0) == "m/b 0"


def test_put_and_memory_lru_bound(make):
    svc = make(enabled=False, memory_size=10)
    svc.put("m/a", {i: f"x{i}" for i in range(50)})
    assert svc.status()["cached"] == 10
    assert svc.known("m/a", 0) == "x0"  # evicted from memory, read back from disk


# ---- bulk prefetch ----------------------------------------------------------------


def test_prefetch_is_resumable(make, fake):
    svc = make()
    calls: list[tuple[int, int | None]] = []
    fake.fail_next(fake.batch_path(BULK, 2), times=1, status=500)
    with pytest.raises(PrefetchError, match="batch-2"):
        svc.prefetch(BULK, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(0, 3), (1, 3), (2, 3)]
    assert svc.known(BULK, 19) == "bulk 19" and svc.known(BULK, 20) is None

    calls.clear()
    assert svc.prefetch(BULK, progress=lambda d, t: calls.append((d, t))) == 10
    assert calls == [(2, 3), (3, 3)]
    assert [fake.requests[fake.batch_path(BULK, n)] for n in range(4)] == [1, 1, 2, 1]
    assert {i: svc.known(BULK, i) for i in range(30)} == {i: f"bulk {i}" for i in range(30)}
    assert svc.label(BULK, 3) == "bulk 3"  # first explanation per index wins
    assert fake.count("/api/") == 0  # labels came from the bulk files, not the API

    assert svc.prefetch(BULK) == 0  # all done: only probes for a new batch
    assert [fake.requests[fake.batch_path(BULK, n)] for n in range(4)] == [1, 1, 2, 2]


def test_prefetch_without_listing_and_into_memory(make, fake, tmp_path):
    fake.list_bucket = False
    blocker = tmp_path / "file"
    blocker.write_text("x")
    svc = make(cache_path=blocker / "labels.sqlite")
    calls = []
    assert svc.prefetch(BULK, progress=lambda d, t: calls.append((d, t))) == 30
    assert calls == [(0, None), (1, None), (2, None), (3, None)]
    assert svc.label(BULK, 25) == "bulk 25"
    assert svc.prefetch(BULK) == 0


def test_prefetch_garbage_batch_raises(make, fake):
    fake.mode = "garbage"
    with pytest.raises(PrefetchError):
        make().prefetch(BULK)


def test_cli_prefetch_and_get(fake, tmp_path):
    cache = tmp_path / "cli.sqlite"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AXON_NEURONPEDIA_URL": fake.url,
        "AXON_NEURONPEDIA_DATASETS_URL": fake.datasets_url,
    }
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "axon_core.labels", *args, "--cache", str(cache)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    res = run("prefetch", BULK)
    assert res.returncode == 0, res.stderr
    assert "3/3" in res.stderr and "30 labels stored" in res.stderr
    res = run("get", NP, "5")
    assert res.returncode == 0 and res.stdout.strip() == "European capitals"
    with LabelService(cache_path=cache, enabled=False) as svc:
        assert svc.known(BULK, 29) == "bulk 29" and svc.known(NP, 5) == "European capitals"


# ---- third-party text -------------------------------------------------------------


def test_labels_are_stored_raw_and_safe_text_cleans(make):
    svc = make()
    svc.label(NP, 7)
    assert wait_for(lambda: svc.label(NP, 7) == XSS)  # verbatim; renderers escape
    assert safe_text("a\x00b\x1b[2Jc\u202eevil\r\nnext") == "ab[2Jcevil next"
    long = safe_text("word " * 100, max_len=20)
    assert len(long) == 20 and long.endswith("…")
    assert safe_text(XSS) == XSS  # no HTML escaping here


@settings(max_examples=60, deadline=None)
@given(st.text(), st.integers(min_value=1, max_value=200))
def test_safe_text_property(text, max_len):
    out = safe_text(text, max_len=max_len)
    assert len(out) <= max_len
    assert not any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in out)
    assert out == out.strip()


# ---- bulk in the background, visible first -------------------------------------------


def test_bulk_runs_in_background_and_is_remembered(make, fake, tmp_path):
    fake.gate["/datasets/"] = threading.Event()  # the bucket holds its answers
    svc = make()
    t0 = time.perf_counter()
    svc.bulk(BULK)
    assert time.perf_counter() - t0 < 0.5  # never waits on the bucket
    assert wait_for(lambda: svc.bulk_state(BULK) == "running")
    assert svc.known(BULK, 12) is None
    fake.gate["/datasets/"].set()
    assert wait_for(lambda: svc.bulk_state(BULK) == "done", timeout=5)
    assert {i: svc.known(BULK, i) for i in range(30)} == {i: f"bulk {i}" for i in range(30)}
    assert fake.count("/api/") == 0 and [fake.requests[fake.batch_path(BULK, n)] for n in range(3)] == [1, 1, 1]
    svc.bulk(BULK)  # done already: no second download
    svc.close()
    again = make()  # a restart on the same cache: marked complete, nothing asked
    fake.reset_counts()
    again.bulk(BULK)
    assert again.bulk_state(BULK) == "done" and fake.count() == 0


def test_bulk_keys_records_on_their_own_index(make, fake):
    rows = [{"modelId": "gpt2-small", "layer": "4-res-jb", "index": i, "description": f"int {i}"} for i in (3, 1)]
    rows += [{"modelId": "gpt2-small", "layer": "4-res-jb", "index": "10", "description": "string 10"}]
    fake.set_batches("gpt2-small/4-res-jb", [rows])
    svc = make()
    svc.bulk("gpt2-small/4-res-jb")
    assert wait_for(lambda: svc.bulk_state("gpt2-small/4-res-jb") == "done")
    assert [svc.known("gpt2-small/4-res-jb", i) for i in (1, 3, 10, 0)] == ["int 1", "int 3", "string 10", None]


def test_while_bulk_runs_only_visible_labels_are_fetched_one_by_one(make, fake):
    fake.set_batches(NP, [[(i, f"bulk {i}") for i in range(100, 120)]])
    fake.gate["/datasets/"] = threading.Event()
    svc = make()
    svc.bulk(NP)
    assert wait_for(lambda: svc.bulk_state(NP) == "running")
    svc.request(NP, [100, 101, 102])  # background wishes: the bulk brings them
    svc.prioritize(NP, [5])  # on screen: asked at once
    assert wait_for(lambda: svc.known(NP, 5) == "European capitals")
    assert wait_for(lambda: idle(svc))
    assert fake.count("/api/feature/") == 1
    fake.gate["/datasets/"].set()
    assert wait_for(lambda: svc.bulk_state(NP) == "done", timeout=5)
    assert svc.labels(NP, [100, 101, 102]) == {i: f"bulk {i}" for i in (100, 101, 102)}
    assert fake.count("/api/feature/") == 1


def test_failed_bulk_leaves_one_by_one_fetches(make, fake):
    svc = make(datasets_url="http://127.0.0.1:9")  # nothing listens
    svc.bulk(NP)
    assert wait_for(lambda: svc.bulk_state(NP) == "failed", timeout=5)
    assert "last_bulk_error" in svc.status()
    svc.request(NP, [5])
    assert wait_for(lambda: svc.known(NP, 5) == "European capitals")


def test_visible_labels_are_fetched_first_in_their_order(make, fake):
    gate = fake.gate["/api/"] = threading.Event()  # the API holds its answers: a queue builds up
    svc = make(max_workers=1)
    svc.request(NP, range(100, 140))  # what a run's steps ask for
    assert wait_for(lambda: fake.count("/api/feature/") == 1)  # one is on its way
    svc.prioritize(NP, [150, 151])  # an older frame's names
    svc.prioritize(NP, [155, 152, 151])  # the newest frame's: first, strongest first
    gate.set()
    assert wait_for(lambda: idle(svc), timeout=5)
    order = [p for _, p in fake.arrivals]
    assert order[1:5] == [fake.feature_path(NP, i) for i in (155, 152, 151, 150)]
    assert len(order) == len(set(order)) == 44  # then the 40 others, each once


# ---- the kept HTTP client ----------------------------------------------------------


def test_one_pooled_client_keeps_its_connections(make, fake):
    svc = make(max_workers=1)
    for i in range(100, 120):
        svc.request(NP, [i])
        assert wait_for(lambda: svc.known(NP, i) == f"label {i}")
    assert fake.count("/api/feature/") == 20
    assert len(fake.peers) <= 2  # kept alive, not a connection a label
    # search by meaning and evidence go through the same pooled client: no connection of their own
    assert svc.semantic.client is svc.client and svc.evidence.client is svc.client
    peers = set(fake.peers)
    assert svc.semantic.ask([NP], "label one hundred") == "queued"
    assert wait_for(lambda: svc.semantic.peek([NP], "label one hundred") is not None)
    svc.evidence.get(NP, 100)
    assert wait_for(lambda: svc.evidence.arrivals > 0)
    assert fake.count("/api/explanation/search") == 1 and fake.count("/api/feature/") == 21
    assert fake.peers == peers


def test_an_oversized_answer_is_a_failure_not_a_label(make, fake):
    fake.feature_extra[(NP, 5)] = {"activations": ["x" * (5 << 20)]}  # 5 MB of feature page
    svc = make()
    svc.request(NP, [5])
    assert wait_for(lambda: svc.status()["failures"] == 1)
    assert svc.label(NP, 5) == "Feature 5" and "MB" in svc.status()["last_error"]
