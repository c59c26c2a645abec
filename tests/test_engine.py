"""The engine: every live run stepped in turns, batched steps equal to single
ones, identical requests computed once, replays equal to fresh runs, Stop and
the time limit, and views that sample at their own cadence."""

from __future__ import annotations

import time

import pytest
import torch

from axon_core.batching import can_batch, step_batch
from axon_core.engine import BatchChooser, Engine
from axon_core.generation import GenerationSettings, generate
from axon_core.residuals import FastStepper
from axon_core.session import RunSession
from axon_core.steering import steering_edit

SETTINGS = GenerationSettings(max_new_tokens=12, temperature=0.9, top_k=0, top_p=1.0, seed=4)


@pytest.fixture(scope="module")
def pair2(pairs):
    """The same model with the blocks.2 SAE (another hook point)."""
    return pairs.get("gpt2-small-res-jb", "blocks.2.hook_resid_pre")


def wait_done(run, timeout: float = 60.0):
    t0 = time.monotonic()
    while not run.finished and time.monotonic() - t0 < timeout:
        run.wait(len(run.steps), 0.05)
    assert run.finished, run.state
    return run


def assert_same_steps(got, want, tol: float = 1e-4):
    """Same tokens and features; values to ``tol`` relative to their size (at least 1)."""
    assert [(s.position, s.token_id, s.next_token_id, [f.index for f in s.features]) for s in got] == \
        [(s.position, s.token_id, s.next_token_id, [f.index for f in s.features]) for s in want]
    for s, t in zip(got, want):
        for f, g in zip(s.features, t.features):
            assert abs(f.activation - g.activation) <= tol * max(1.0, abs(g.activation))
            assert (f.attribution is None) == (g.attribution is None)
            assert f.attribution is None or abs(f.attribution - g.attribution) <= tol * max(1.0, abs(g.attribution))


def test_batched_step_equals_single_steps(pair, pair2):
    """Three runs (two hook points, one steered) through one batched forward per
    token: the same activations and logits as each stepping alone."""
    w = pair.fast_weights
    prompts = [pair.model.to_tokens(p)[0] for p in ("The capital of France is", "def f(x):", "Hello")]
    edit = steering_edit(pair.sae, ((5, 30.0),))
    spec = [("blocks.8.hook_resid_pre", None), ("blocks.2.hook_resid_pre", None), ("blocks.8.hook_resid_pre", edit)]
    alone = [FastStepper(w, h, e) for h, e in spec]
    together = [FastStepper(w, h, e) for h, e in spec]
    assert can_batch(together) and not can_batch(together[:1])
    for a, b, toks in zip(alone, together, prompts):
        a.step(toks)
        b.step(toks)
    nxt = [11, 22, 33]
    for _ in range(5):
        outs = step_batch(together, nxt)
        for a, o, t in zip(alone, outs, nxt):
            ref = a.step(torch.tensor([t]))
            assert o.acts.shape == ref.acts.shape
            assert torch.allclose(o.acts, ref.acts, atol=1e-4)
            assert torch.allclose(o.last_logits, ref.last_logits, atol=1e-4)
            assert torch.allclose(o.final_scale, ref.final_scale, atol=1e-5)
        nxt = [int(o.last_logits.argmax()) for o in outs]
    assert [s.length for s in together] == [s.length for s in alone]


@pytest.mark.parametrize("batch", ["always", "never"])
def test_runs_at_once_equal_their_solo_runs(pair, pair2, batch):
    """Four different runs live at once (two SAEs, one steered), batched or one
    by one: each equals its run alone, and their steps interleave."""
    engine = Engine(batch=batch, replay_bytes=0)
    try:
        reqs = [(pair, "The capital of France is", SETTINGS, ()),
                (pair, "def fibonacci(n):", GenerationSettings(max_new_tokens=12, seed=9), ()),
                (pair2, "She opened the letter", SETTINGS, ()),
                (pair, "The capital of France is", SETTINGS, ((7, 25.0),))]
        runs = [engine.submit(p, prompt, s, steer) for p, prompt, s, steer in reqs]
        for r in runs:
            wait_done(r)
        for (p, prompt, s, steer), r in zip(reqs, runs):
            edit = steering_edit(p.sae, steer) if steer else None
            assert r.state == "done" and r.complete
            assert_same_steps(r.steps, list(generate(p, prompt, s, edit)))
        stats = engine.stats()
        assert stats["computed"] == 4
        if batch == "always":
            assert stats["batched_steps"] > 0
        else:
            assert stats["batched_steps"] == 0
        a, b = runs[0].step_times, runs[1].step_times
        merged = [x for _, x in sorted([(t, 0) for t in a] + [(t, 1) for t in b])]
        assert sum(x != y for x, y in zip(merged, merged[1:])) >= 6  # turns, not one run after another
    finally:
        engine.close()


def test_identical_requests_are_computed_once_and_replayed(pair):
    engine = Engine(replay_bytes=8 << 20)
    try:
        settings = GenerationSettings(max_new_tokens=30, seed=21)
        first = engine.submit(pair, "The same link, opened by many", settings)
        second = engine.submit(pair, "The same link, opened by many", settings)
        assert second is first  # in flight: attached
        engine.release(second)
        wait_done(first)
        engine.release(first)
        later = engine.submit(pair, "The same link, opened by many", settings)  # finished: replayed
        assert later is first and later.finished
        other = engine.submit(pair, "The same link, opened by many", GenerationSettings(max_new_tokens=30, seed=22))
        wait_done(other)
        stats = engine.stats()
        assert (stats["computed"], stats["attached"], stats["replayed"]) == (2, 1, 1)
        assert_same_steps(later.steps, list(generate(pair, "The same link, opened by many", settings)))

        # A replay's view is paced like the live run, and its run JSON equals a fresh run's.
        fresh = RunSession({"neuronpedia_id": None}, settings)
        for step in generate(pair, "The same link, opened by many", settings):
            fresh.add(step)
        view = RunSession({"neuronpedia_id": None}, settings)
        t0 = time.monotonic()
        view.follow(later, now=t0)
        assert view.sync(now=t0) < len(later.steps)  # not all at once
        assert view.sync(now=t0 + later.offsets[-1] + 1e-3) > 0 and view.caught_up
        got, want = view.export_json(), fresh.export_json()
        got["meta"].pop("ms_per_token"), want["meta"].pop("ms_per_token")
        assert [t["token_id"] for t in got["tokens"]] == [t["token_id"] for t in want["tokens"]]
        assert got["edges"] == want["edges"] or len(got["edges"]) == len(want["edges"])
    finally:
        engine.close()


def test_a_run_nobody_watches_stops(pair):
    engine = Engine()
    try:
        run = engine.submit(pair, "A long run nobody watches", GenerationSettings(max_new_tokens=200, seed=1))
        while len(run.steps) < 8:
            run.wait(len(run.steps), 0.05)
        engine.release(run)
        wait_done(run, timeout=30)
        # It ends at its next turn: at most the one token being computed when the
        # last viewer left comes after (counted by the engine, not timed).
        assert run.state == "cancelled" and run.steps_at_release >= 8
        assert run.steps_at_release <= len(run.steps) <= run.steps_at_release + 1 < 200
        assert run.generation is None  # KV cache freed
        stats = engine.stats()
        assert stats["cancelled"] == 1 and stats["live"] == 0
        assert stats["runs"][-1]["steps_at_release"] == run.steps_at_release
        steps_done = stats["single_steps"] + stats["batched_steps"]
        wait_done(engine.submit(pair, "x", GenerationSettings(max_new_tokens=1, seed=1)))  # a later round ran
        assert len(run.steps) == stats["runs"][-1]["steps"]  # nothing more for the cancelled run
        assert engine.stats()["single_steps"] + engine.stats()["batched_steps"] <= steps_done + 1
        # not cached: the same request computes again
        again = engine.submit(pair, "A long run nobody watches", GenerationSettings(max_new_tokens=200, seed=1))
        assert again is not run
        engine.release(again)
    finally:
        engine.close()


def test_time_limit_and_a_new_run_starts_at_once(pair):
    engine = Engine(max_run_seconds=0.3)
    try:
        busy = [engine.submit(pair, f"Busy run {i}", GenerationSettings(max_new_tokens=200, seed=i)) for i in range(4)]
        for r in busy:
            while not r.steps and not r.finished:  # all four are live and stepping
                r.wait(0, 0.05)
        late = engine.submit(pair, "Arrives while four runs are live", GenerationSettings(max_new_tokens=3))
        late.wait(0, 30)
        assert late.steps
        # its prompt pass came in the next round (the engine's own round count), not after the others' tokens
        assert late.started_round - late.arrived_round <= 1, (late.arrived_round, late.started_round)
        for r in busy:
            wait_done(r)
            assert r.state == "done" and not r.complete
            assert "stopped: runs are limited to 0 s" in r.notices[-1]
    finally:
        engine.close()


def test_a_failing_run_fails_alone(pair, monkeypatch):
    engine = Engine(batch="never")
    try:
        good = engine.submit(pair, "A good run", GenerationSettings(max_new_tokens=20, seed=2))
        bad = engine.submit(pair, "A bad run", GenerationSettings(max_new_tokens=20, seed=3))

        def boom():
            raise RuntimeError("boom")

        monkeypatch.setattr(bad.generation, "step", boom)
        wait_done(bad)
        wait_done(good)
        assert bad.state == "failed" and "RuntimeError" in bad.error
        assert good.state == "done" and len(good.steps) > 20
    finally:
        engine.close()


def test_batch_chooser_follows_the_measurements():
    c = BatchChooser(explore_every=1000)
    assert not c.batch(4)  # nothing measured yet: one by one first
    c.record(1, 0.050)
    assert c.batch(4)  # B=4 never tried: try it
    c.record(4, 0.300)  # slower than 4 x 50 ms
    assert not c.batch(4)
    c.record(8, 0.200)  # faster than 8 x 50 ms
    assert c.batch(8)
    assert BatchChooser("never").batch(16) is False and BatchChooser("always").batch(2) is True
    assert c.table()["batched_ms"] == {"4": 300.0, "8": 200.0}


def test_usable_cpus_reads_a_cgroup_quota(tmp_path):
    """A container's CPU quota (a CPU Space: 2 vCPUs on a larger host) caps the
    count torch would otherwise take from the host; no quota leaves the affinity mask."""
    import os

    from axon_core.engine import usable_cpus

    mask = len(os.sched_getaffinity(0))
    v2 = tmp_path / "v2"
    v2.mkdir()
    assert usable_cpus(v2) == mask  # no files: the mask
    (v2 / "cpu.max").write_text("max 100000\n")
    assert usable_cpus(v2) == mask
    (v2 / "cpu.max").write_text("50000 100000\n")  # half a CPU rounds up to one
    assert usable_cpus(v2) == 1
    (v2 / "cpu.max").write_text(f"{(mask + 3) * 100000} 100000\n")  # a quota above the mask: the mask
    assert usable_cpus(v2) == mask
    (v2 / "cpu.max").write_text("garbage\n")
    assert usable_cpus(v2) == mask
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cpus(v1) == 1
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert usable_cpus(v1) == mask


def test_torch_threads_leave_the_server_a_core_on_cpu():
    from axon_core.engine import engine_threads, share_cpus, usable_cpus

    assert [engine_threads("cpu", n) for n in (1, 2, 4, 16)] == [1, 1, 3, 15]
    assert engine_threads("cuda", 1) == 1 and engine_threads("cuda", 64) <= 64
    before = torch.get_num_threads()
    try:
        assert share_cpus("cpu") == torch.get_num_threads() == engine_threads("cpu", usable_cpus())
        assert share_cpus("cpu", "3") == torch.get_num_threads() == 3  # the person's override
        assert share_cpus("cpu", "many") == torch.get_num_threads() == engine_threads("cpu", usable_cpus())
        assert share_cpus("cpu", "0") == engine_threads("cpu", usable_cpus())
    finally:
        torch.set_num_threads(before)


def test_thread_chooser_picks_the_faster_of_two_fake_step_timings_and_rechecks():
    """Start-up: each count timed in turns (a fake clock: two threads 30 ms a step,
    one 40 ms) while the view-like load runs beside; in use, a re-check every
    ``recheck_every`` steps tries the neighbour and switches when the load has
    made it the faster. A count far behind at start-up is not timed again."""
    import threading

    from axon_core.threads import ThreadChooser, measure_startup

    chooser = ThreadChooser(cpus=2, recheck_every=10, burst=3)
    assert chooser.candidates == [1, 2]
    cost = {1: 0.040, 2: 0.030}
    state = {"n": 0, "now": 0.0, "steps": {1: 0, 2: 0}}
    beside = []

    ran = threading.Event()

    def step():
        ran.wait(5)  # the load beside has started
        state["now"] += cost[state["n"]]
        state["steps"][state["n"]] += 1

    def load():
        beside.append(threading.get_ident())
        ran.set()

    def set_threads(n):
        state["n"] = n

    chosen = measure_startup(chooser, step, rounds=2, steps=3, background=load,
                             interval=0.001, timer=lambda: state["now"], set_threads=set_threads)
    assert chosen == chooser.threads() == state["n"] == 2 and chooser.source == "measured"
    assert state["steps"] == {1: 8, 2: 8}  # (1 untimed + 3 timed) x 2 rounds each
    assert chooser.table()["startup_ms"] == {"1": 40.0, "2": 30.0}
    assert beside and threading.get_ident() not in beside  # the load ran in another thread
    # in use: the server's load now makes two threads slower than one
    cost.update({1: 0.032, 2: 0.040})
    for _ in range(9):
        chooser.record(2, cost[2])
    assert chooser.threads() == 2 and chooser.rechecks == 0
    chooser.record(2, cost[2])  # the 10th step: a re-check starts
    assert chooser.rechecks == 1 and chooser.threads() == 1
    for _ in range(4):  # the first step after a switch is dropped, then 3 timed
        chooser.record(chooser.threads(), cost[chooser.threads()])
    assert chooser.threads() == 1 and chooser.switches == 1
    assert chooser.table()["recheck_ms"] == {"1": 32.0}
    # a re-check that finds no better count keeps the choice
    for _ in range(10):
        chooser.record(1, cost[1])
    assert chooser.threads() == 2
    for _ in range(4):
        chooser.record(2, cost[2])
    assert chooser.threads() == 1 and chooser.rechecks == 2 and chooser.switches == 1
    # start-up on a busy host: two threads 3x slower are timed in the first round only
    busy = ThreadChooser(cpus=2)
    cost.update({1: 0.030, 2: 0.090})
    state["steps"] = {1: 0, 2: 0}
    assert measure_startup(busy, step, rounds=3, steps=3, timer=lambda: state["now"], set_threads=set_threads) == 1
    assert state["steps"] == {1: 12, 2: 4}


def test_thread_override_and_single_cpu_measure_nothing():
    from axon_core.threads import ThreadChooser, candidate_counts, measure_startup

    assert candidate_counts(1) == [1] and candidate_counts(3) == [1, 2, 3]
    assert candidate_counts(16) == [1, 2, 4, 8, 15, 16]
    calls = []
    fixed = ThreadChooser(cpus=4, fixed=3)
    assert measure_startup(fixed, lambda: calls.append(1), set_threads=calls.append) == 3
    assert calls == [3] and fixed.source == "override"
    for _ in range(1000):
        fixed.record(3, 0.01)
    assert fixed.threads() == 3 and fixed.rechecks == 0
    one = ThreadChooser(cpus=1)
    assert measure_startup(one, lambda: calls.append("step"), set_threads=calls.append) == 1 and "step" not in calls


def test_engine_chooses_threads_by_real_steps_and_applies_them_in_its_thread(pair):
    """choose_threads times the pair's real steps with every candidate count; the
    engine thread then runs with the chosen count, and the stats show the measurements."""
    from axon_core.threads import candidate_counts
    from axon_core.engine import usable_cpus

    engine = Engine()
    before = torch.get_num_threads()
    try:
        chosen = engine.choose_threads(pair, rounds=1, steps=2)
        table = engine.stats()["threads"]
        assert table["chosen"] == chosen and chosen in candidate_counts(usable_cpus())
        if usable_cpus() > 1:
            assert table["source"] == "measured"
            assert set(table["startup_ms"]) == {str(n) for n in candidate_counts(usable_cpus())}
        other = 2 if chosen == 1 else 1
        engine.threads.current = other  # as after a re-check: the engine thread must follow
        torch.set_num_threads(chosen)  # this (the caller's) thread keeps another count
        seen, record = [], engine.threads.record
        engine.threads.record = lambda n, s: (seen.append((n, torch.get_num_threads())), record(n, s))
        wait_done(engine.submit(pair, "The capital of France is", SETTINGS))
        assert seen and set(seen) == {(other, other)}  # in the engine thread, at every step
        assert engine.stats()["torch_threads"] == other and torch.get_num_threads() == chosen
        assert engine.choose_threads(pair, override="1") == 1 and engine.stats()["threads"]["source"] == "override"
        assert engine.stats()["encode"] and all(r["path"] in ("fp16", "bf16", "fp32") for r in engine.stats()["encode"])
    finally:
        engine.close()
        torch.set_num_threads(before)
