"""Memory stays flat across *completed* runs of one session (issue 10's leak was
there: Gradio kept every finished run's JSON in the session's state), and the
label cache's reader connections are pooled (one per server thread, never
closed, was the other half). Decided by counts, not by clocks: what the Gradio
session holds, which of AXON's run objects are alive (``gc``), the label store's
connections and file descriptors; the process's RSS only as a loose bound.

The app is served in this process (``app_module``'s ``demo``, on a free port),
so the test can look inside it while a real gradio_client session runs on it.
"""

from __future__ import annotations

import gc
import os
import sqlite3
import threading
from collections import deque
from pathlib import Path

import cachetools
import psutil
import pytest

import gradio_client
from app_server import free_port

BASE = {
    "prompt": "", "model": "gpt2-small", "release": "gpt2-small-res-jb", "sae_id": "blocks.8.hook_resid_pre",
    "temperature": 1.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0, "max_tokens": 2, "seed": 0,
    "feature_k": 8, "threshold": 0.1, "steer": "", "edge_kind": "npmi", "layers": [],
}


@pytest.fixture(scope="module")
def served(app_module):
    demo = app_module.demo
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, ssr_mode=False)
    try:
        yield app_module, f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def _alive(cls) -> list:
    gc.collect()
    return [o for o in gc.get_objects() if type(o) is cls]


def _session_sizes(demo, session_hash: str) -> tuple[int, int]:
    """What Gradio keeps for one session: its blocks table and its config values."""
    state = demo.state_holder.session_data[session_hash]
    return len(state.blocks_config.blocks), len(state.config_values)


def test_completed_runs_in_one_session_leave_nothing_behind(served, monkeypatch):
    """One session completes twice as many runs as the engine's table of recent
    runs holds (64 in the app; 8 here, so the table fills in a few seconds). After
    the table is full: Gradio's state for the session does not grow; every
    LiveRun still alive is one the engine's bounded tables hold (recent runs, the
    replay cache, shrunk here to a few runs) and every other run is gone; every TokenStep alive belongs to one
    of them; the engine has no run in flight; RSS grows by at most a few MiB."""
    from axon_core.engine import LiveRun
    from axon_core.generation import TokenStep

    app, url = served
    engine = app.SERVICES.engine
    assert engine._recent.maxlen == 64  # the app's table; a smaller one fills sooner and proves the same
    recent = 8
    monkeypatch.setattr(engine, "_recent", deque(engine._recent, maxlen=recent))
    # and a replay cache of a few runs' size (the app's holds megabytes of them), so that
    # most of this session's runs must really be freed
    monkeypatch.setattr(engine, "_replay", cachetools.TTLCache(maxsize=40_000, ttl=3600, getsizeof=LiveRun.nbytes))
    # and a fork-keys store of a few runs' keys (the app's holds 64 MB), so that it must evict
    from axon_core.kv_store import KVStore
    monkeypatch.setattr(engine, "_kv", KVStore(120_000))  # ~2 tiny runs (6 KB a position)
    # runs (and steps) other tests of this process left alive are not this session's: held here
    # (so their ids cannot be reused) and left out below
    earlier_runs, earlier_steps = _alive(LiveRun), _alive(TokenStep)
    earlier = {id(r) for r in earlier_runs} | {id(s) for s in earlier_steps}
    client = gradio_client.Client(url, verbose=False, download_files=False)
    proc = psutil.Process()

    def complete(i: int) -> None:
        values = {**BASE, "prompt": f"Run {i} of one session", "seed": i}
        out = client.predict(*values.values(), api_name="/generate")
        run = out[4]  # the run JSON: set when a run finishes
        assert run["meta"]["prompt"] == values["prompt"] and sum(not t["is_prompt"] for t in run["tokens"]) == 2

    runs = 2 * recent
    for i in range(recent):  # the engine's table of recent runs fills up
        complete(i)
    sizes = _session_sizes(app.demo, client.session_hash)
    rss = proc.memory_info().rss
    for i in range(recent, runs):
        complete(i)
    assert _session_sizes(app.demo, client.session_hash) == sizes  # Gradio keeps nothing per finished run
    grown = proc.memory_info().rss - rss

    stats = engine.stats()
    assert stats["live"] == 0 and stats["computed"] >= runs and len(stats["runs"]) == recent
    held = {id(r) for r in engine._recent} | {id(r) for r in engine._replay.values()}
    alive = [r for r in _alive(LiveRun) if id(r) not in earlier]
    assert {id(r) for r in alive} <= held, "runs kept alive outside the engine's bounded tables"
    assert len(alive) <= recent + len(engine._replay) < runs  # and the others are gone
    assert all(r.generation is None for r in alive)  # no finished run keeps its stepper
    # the keys and values kept for forks (axon_core.kv_store) are bounded by bytes, not by runs:
    # within the store's budget, at most as many runs as fit, whatever the number of runs completed
    kept = stats["kv_kept"]
    assert kept["bytes"] <= kept["max_bytes"] and kept["runs"] <= len(engine._kv) <= runs
    per_run = max((k.nbytes for k in engine._kv._entries.values()), default=1)
    assert kept["runs"] <= max(1, kept["max_bytes"] // per_run) < runs and kept["evicted"] > 0
    assert not engine._inflight or all(r.finished for r in engine._inflight.values())
    steps = {id(s) for r in alive for s in r.steps}
    assert {id(s) for s in _alive(TokenStep) if id(s) not in earlier} <= steps, \
        "steps kept alive outside the engine's runs"
    print(f"\n{runs - recent} completed runs after the first {recent}: RSS {grown / 2**20:+.1f} MiB, "
          f"{len(alive)} runs alive")
    assert grown < 32 * 2**20  # a loose bound: the counts above are the check


# ---------------------------------------------------------------- the label reader pool


def _db_fds(path: Path) -> int:
    """This process's open file descriptors on the database file itself."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}") == str(path)
        except OSError:
            pass
    return n


@pytest.fixture
def counted_store(tmp_path, monkeypatch):
    """A LabelStore with some rows, and every connection it opens after that."""
    from axon_core.labels import store as store_module

    store = store_module.LabelStore(tmp_path / "labels.sqlite")
    store.write([("np/x", i, f"label {i}", 1.0) for i in range(50)])
    opened: list[sqlite3.Connection] = []
    real = store_module._connect

    def connect(path):
        con = real(path)
        opened.append(con)
        return con

    monkeypatch.setattr(store_module, "_connect", connect)
    yield store, opened, store_module.MAX_IDLE_READERS
    store.close()


def _is_open(con: sqlite3.Connection) -> bool:
    try:
        con.execute("SELECT 1")
        return True
    except sqlite3.ProgrammingError:
        return False


def test_label_readers_are_reused_across_threads_that_come_and_go(counted_store):
    """200 reads, each from a new thread (as server worker threads come and go):
    one reader connection serves them all; none is opened per thread."""
    store, opened, _ = counted_store
    fds = _db_fds(store.path)
    got = []
    for i in range(200):
        t = threading.Thread(target=lambda i=i: got.append(store.read(("np/x", i % 50))))
        t.start()
        t.join()
    assert [g[0] for g in got] == [f"label {i % 50}" for i in range(200)]
    assert len(opened) == 1 and len(store._readers) == 1
    assert _db_fds(store.path) == fds + 1


def test_label_readers_are_bounded_under_concurrent_reads(counted_store):
    """16 threads reading at once each get their own connection; afterwards only
    MAX_IDLE_READERS stay open (the others closed), the next burst reuses those,
    and close() closes them all. (SQLite may keep a closed connection's file
    descriptor while others hold locks on the file, and reuse it for the next
    open: the process's descriptors on the file do not grow from burst to burst.)"""
    store, opened, idle = counted_store
    fds = _db_fds(store.path)
    n = 16
    together = threading.Barrier(n)
    labels = [None] * n

    def read_while_all_hold_one(k: int) -> None:
        with store._reader() as con:  # every thread holds a connection at the same moment
            together.wait(timeout=30)
            labels[k] = con.execute("SELECT label FROM labels WHERE idx = ?", (k,)).fetchone()[0]

    def burst() -> None:
        threads = [threading.Thread(target=read_while_all_hold_one, args=(k,)) for k in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert labels == [f"label {k}" for k in range(n)]

    burst()
    assert len(opened) == n and len({id(c) for c in opened}) == n  # one each while all read at once
    assert len(store._readers) == idle and sum(map(_is_open, opened)) == idle
    after_one = _db_fds(store.path)
    assert fds + idle <= after_one <= fds + n
    burst()  # the idle ones serve again; only the shortfall is opened, and closed after
    assert len(opened) == 2 * n - idle and sum(map(_is_open, opened)) == idle
    for _ in range(20):  # reads one at a time afterwards open nothing
        assert store.read(("np/x", 3))[0] == "label 3"
    assert len(opened) == 2 * n - idle and _db_fds(store.path) <= after_one
    store.close()
    assert not any(map(_is_open, opened)) and _db_fds(store.path) == 0
