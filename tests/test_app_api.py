"""The app as a public Space sees it: one real `python app.py` server, driven
through gradio_client (and raw HTTP), with hostile inputs, several sessions at
once, Stop pressed 50 times, Neuronpedia failing, and every streamed number
recomputed from scratch.

The server (one per module) runs on the tiny offline hub with
``AXON_CONCURRENCY=4``, ``AXON_MAX_NEW_TOKENS=128``, ``AXON_MAX_PROMPT_CHARS=500``,
an unwritable label cache and a fake Neuronpedia whose mode the tests switch.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import urllib.request

import psutil
import pytest
import torch

from app_server import AppServer
from neuronpedia_fake import FakeNeuronpedia
from reference import Reference, check_steps, rows_of_json

import gradio_client  # a dependency of gradio itself: never skipped
Client = gradio_client.Client

NP_ID = "gpt2-small/8-res-jb"
MAX_NEW_TOKENS, MAX_PROMPT_CHARS = 128, 500
BASE = {
    "prompt": "The capital of France is", "model": "gpt2-small", "release": "gpt2-small-res-jb",
    "sae_id": "blocks.8.hook_resid_pre", "temperature": 0.8, "top_k": 50, "top_p": 0.95,
    "repetition_penalty": 1.1, "max_tokens": 1, "seed": 0, "feature_k": 12, "threshold": 0.1,
    "steer": "", "edge_kind": "npmi", "layers": [], "watch": "", "fork": "",
}
ORDER = list(BASE)
STATUS, RUN = 3, 4  # indices of the status line and the run JSON in predict()'s result


def args(**over):
    return [over.get(k, BASE[k]) for k in ORDER]


def call(client, **over):
    return client.predict(*args(**over), api_name="/generate")


def is_status(value: str) -> bool:
    """The status line (HTML: the device in bold, its state in a data attribute): the
    device the server runs on, which is this machine's default (cuda where there is one)."""
    from axon_core.loading import default_device

    return value.startswith("<b data-state=") and f'class="axon-state">{default_device()}</b>' in value[:80]


def new_client(app) -> Client:
    return app.client()  # closed when the server stops (tests/app_server.py)


def tokens_of(run: dict) -> list:
    """What the model did: every token with its features, activations and attributions."""
    return [(t["position"], t["token_id"], t["next_token_id"],
             [(f["index"], f["activation"], f["attribution"]) for f in t["features"]]) for t in run["tokens"]]


def assert_same_run(got: dict, want: dict, tol: float = 1e-4) -> None:
    """Same tokens, same features; activations and attributions equal up to float
    rounding (with several torch threads, runs computing at once may split a sum
    differently, and a batched step of several runs rounds differently from one
    run's step: ~1e-6)."""
    a, b = tokens_of(got), tokens_of(want)
    assert [(p, t, n, [i for i, _, _ in fs]) for p, t, n, fs in a] == [(p, t, n, [i for i, _, _ in fs]) for p, t, n, fs in b]
    for (_, _, _, fa), (_, _, _, fb) in zip(a, b):
        for (_, x, u), (_, y, v) in zip(fa, fb):
            assert abs(x - y) <= tol and (u is None) == (v is None) and (u is None or abs(u - v) <= tol)


@pytest.fixture(scope="module")
def neuronpedia():
    labels = {(NP_ID, i): f"label {i}" for i in range(0, 1024, 3)}
    with FakeNeuronpedia(labels=labels) as fake:
        yield fake


@pytest.fixture(scope="module")
def app(offline_hub, neuronpedia, tmp_path_factory):
    logs = tmp_path_factory.mktemp("app-api")
    blocker = logs / "not-a-directory"
    blocker.write_text("a file where the label cache's folder should be")
    env = {
        "AXON_LABEL_CACHE": str(blocker / "labels.sqlite"),  # unwritable, even for root
        "AXON_CONCURRENCY": "8", "AXON_MAX_NEW_TOKENS": str(MAX_NEW_TOKENS),
        "AXON_MAX_PROMPT_CHARS": str(MAX_PROMPT_CHARS),
        # No replay cache here: a request repeated later is computed again, so the
        # concurrent sessions below really generate at once (replays: tests/test_engine.py).
        "AXON_REPLAY_MB": "0",
        # The fake answers at once: no client-side rate cap, so a run's labels are in by its end
        # (at the default 5/s, each run with new features waited ~2 s for them after its last token).
        "AXON_NEURONPEDIA_RATE": "500",
        # One torch thread: tiny models on a busy 2-core machine, no spin-waiting.
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
    }
    with AppServer(offline_hub, neuronpedia=neuronpedia, env=env, log_dir=logs) as server:
        yield server
        log = server.log_text()
    assert "Traceback" not in log, log[-4000:]


@pytest.fixture(scope="module")
def client(app):
    return new_client(app)


# ---------------------------------------------------------------- 1. input

HOSTILE = {
    "prompt": ["", " ", "\n\t\r  ", None, "x" * 10_000, "a\x00b\x07c\x1b[31m d\x7f", "🧠🔥✨ emoji",
               "שלום עולם", "مرحبا بالعالم", "\u202eevil\u202c text", "<|endoftext|>", 12345, ["a", "list"],
               {"a": "dict"}, True, "<script>alert(1)</script>", "**bold** [link](http://example.com)",
               "💥" * 400, "\u200b\u200b", "Ω" * 600],
    "model": [None, "", "nope", "gemma-2-2b", 5, ["gpt2-small"], "gpt2-small\x00", "m" * 500],
    "release": [None, "", "nope", " gpt2-small-res-jb ", 7, "r" * 1000, "../../etc/passwd",
                "gpt2-small-attn-out-v5-32k", ["gpt2-small-res-jb"]],
    "sae_id": [None, "", "blocks.3.hook_resid_pre", "blocks.99.hook_resid_pre", "nope", 3,
               "blocks.2.hook_resid_pre", "<img src=x onerror=alert(1)>"],
    "temperature": [-1, 0, 1e-320, 2.0000001, 100, 1e308, "abc", "", None, [1], "0x10", True, "nan",
                    "-inf", "1e999", {"t": 1}],
    "top_k": [-5, 0, 200, 201, 10**6, 1.5, "7", "x", None, 10**30],
    "top_p": [0, -0.5, 1e-9, 0.01, 1, 1.5, "nan", None, "abc", 1e-320],
    "repetition_penalty": [0, -1, 0.5, 2, 3, 1e300, "nan", None],
    "max_tokens": [0, -1, 1, MAX_NEW_TOKENS, MAX_NEW_TOKENS + 1, 10**9, 1e12, 2.7, "3", "many", None],
    "seed": [-1, 0, 2**31 - 1, 2**31, 2**63, 10**40, 1.5, "x", None, "nan", -10**20],
    "feature_k": [0, -3, 1, 64, 65, 10**6, 2.5, "x", None],
    "threshold": [-1, 0, 10, 10.5, 1e300, "x", None, "nan", 1e-320],
    "steer": ["", None, "1:2", "abc:def", "99999999:5", "1:nan,2:inf", "1:1," * 20, "5:1e308", ",,,", 7,
              "0:-100", "1023:5", "1:2:3"],
    "edge_kind": ["npmi", "npmi_all", "cooccurrence", "decoder", "virtual", "causal", "nope", None, 3, [1], ""],
    "layers": [[], [2, 5], [2, 5, 11, 8], [0, 1, 2, 3, 4], "2,5", "x", None, [99], "1,2,99", "2,99", [-1], "<b>",
               [8], [2, 2, 2]],
    "watch": ["", None, "7", "x", "8:5", "1," * 40, "99999999", 5, [1], "<b>", "2:3,2:3", "-1"],
    "fork": ["", None, "7", "x:y", "1:13", "-1:5", "8:99999999999", "8:-3", "999:13", 5, [1], "<b>", "8:13:x"],
}
# What the status line must then say (a clamped value, or the reason for a refusal).
EXPECT = {
    ("prompt", ""): "prompt is empty", ("prompt", " "): "prompt is empty", ("prompt", None): "prompt is empty",
    ("prompt", "x" * 10_000): f"prompt truncated to {MAX_PROMPT_CHARS} characters",
    ("prompt", "a\x00b\x07c\x1b[31m d\x7f"): "removed 4 control characters",
    ("prompt", "💥" * 400): "tokens long; this model reads at most 256",
    ("model", "nope"): "does not go with release", ("release", "nope"): "Unknown SAE",
    ("release", "gpt2-small-attn-out-v5-32k"): "has no SAE",
    ("sae_id", "blocks.3.hook_resid_pre"): "Could not download SAE", ("sae_id", "nope"): "Unknown SAE",
    ("temperature", -1): "temperature -1 clamped to 0", ("temperature", "abc"): "is not a number",
    ("temperature", 100): "clamped to 2", ("top_k", 201): "top_k 201 clamped to 200",
    ("top_p", 0): "top_p 0 clamped to 0.01", ("repetition_penalty", 0): "clamped to 1",
    ("max_tokens", 10**9): f"clamped to {MAX_NEW_TOKENS}", ("max_tokens", 0): "max_tokens 0 clamped to 1",
    ("seed", -1): "seed -1 clamped to 0", ("seed", "x"): "is not a number", ("feature_k", 65): "clamped to 64",
    ("threshold", 10.5): "threshold 10.5 clamped to 10", ("steer", "abc:def"): "skipped bad entry",
    ("steer", "99999999:5"): "not in this SAE", ("layers", "2,99"): "has no SAE like blocks.8.hook_resid_pre at 99",
    ("layers", "x"): "layers: skipped", ("layers", "2,5"): "layers 2, 5, 8",
}
FAILURE_WORDS = ("Traceback", "Generation failed", "Error(", "exception")


HOSTILE_SAMPLE = 80  # calls by default; AXON_HOSTILE_ALL=1 sends every case (~210 calls, ~4 min here)


def _expects_words(case: dict) -> bool:
    if len(case) != 1:
        return False
    (key, value), = case.items()
    return any(k == key and type(v) is type(value) and v == value for k, v in EXPECT)


def hostile_cases(n_random: int = 40, sample: int | None = None) -> list[dict]:
    """Every single hostile value, plus ``n_random`` combinations of 2–5 of them.
    With ``sample``: a fixed (seeded) subset of that size that keeps every case
    whose message is checked word for word (EXPECT), two more single values of
    each input, 12 combinations, and the rest drawn from what is left."""
    cases = [{key: value} for key, values in HOSTILE.items() for value in values]
    rng = random.Random(20240601)
    for _ in range(n_random):
        keys = rng.sample(ORDER, rng.randint(2, 5))
        cases.append({k: rng.choice(HOSTILE[k]) for k in keys})
    if sample is None or sample >= len(cases):
        return cases
    keep = [i for i, c in enumerate(cases) if _expects_words(c)]
    for key in HOSTILE:
        singles = [i for i, c in enumerate(cases) if list(c) == [key] and i not in keep]
        keep += rng.sample(singles, min(2, len(singles)))
    combos = [i for i, c in enumerate(cases) if len(c) > 1]
    keep += rng.sample(combos, min(12, len(combos)))
    rest = [i for i in range(len(cases)) if i not in keep]
    keep += rng.sample(rest, max(0, sample - len(keep)))
    return [cases[i] for i in sorted(keep)]


def test_hostile_sample_keeps_what_is_checked():
    """The default sample still holds every case whose message is asserted, and every input."""
    full, sample = hostile_cases(), hostile_cases(sample=HOSTILE_SAMPLE)
    assert len(sample) == HOSTILE_SAMPLE < len(full) and all(c in full for c in sample)
    assert sum(map(_expects_words, sample)) == sum(map(_expects_words, full)) == len(EXPECT)
    assert {k for c in sample for k in c} == set(HOSTILE)
    assert sum(len(c) > 1 for c in sample) >= 10  # combinations too


def _call_all(app, cases: list[dict], sessions: int) -> list:
    """Every case through /generate, from ``sessions`` gradio_client sessions at once."""
    outs: list = [None] * len(cases)
    todo = list(range(len(cases)))
    lock = threading.Lock()

    def worker():
        c = new_client(app)
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop()
            try:
                outs[i] = call(c, **cases[i])
            except Exception as err:  # noqa: BLE001 - asserted by the caller
                outs[i] = err

    threads = [threading.Thread(target=worker) for _ in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    return outs


def is_run(value) -> bool:
    return isinstance(value, dict) and value.get("schema") == "axon-run/2"


def test_hostile_inputs_get_a_message_or_a_clamped_value(app, client):
    """A few hundred hostile calls through gradio_client: each returns a status
    line saying what was clamped or refused, never a bare error or a trace."""
    cases = hostile_cases(sample=None if os.environ.get("AXON_HOSTILE_ALL") == "1" else HOSTILE_SAMPLE)
    outs = _call_all(app, cases, sessions=1)  # on 2 cores, more sessions only add contention
    counts: dict[str, int] = {}
    finished = 0
    for case, out in zip(cases, outs):
        for key in case:
            counts[key] = counts.get(key, 0) + 1
        assert not isinstance(out, Exception), (case, out)  # e.g. a bare Gradio error
        status = out[STATUS]
        assert isinstance(status, str) and is_status(status), (case, status)
        assert not any(w in status for w in FAILURE_WORDS), (case, status)
        if len(case) == 1:
            (key, value), = case.items()
            for (k, v), words in EXPECT.items():
                if k == key and type(v) is type(value) and v == value:
                    assert words in status, (case, status)
        run = out[RUN]
        if is_run(run):  # a finished run: what the settings were clamped to is what ran
            finished += 1
            s = run["settings"]
            assert 1 <= s["max_new_tokens"] <= MAX_NEW_TOKENS and 0 <= s["top_k"] <= 200
            assert 0 < s["top_p"] <= 1 and 0 <= s["activation_threshold"] <= 10
            assert len(run["meta"]["prompt"]) <= MAX_PROMPT_CHARS
            assert sum(not t["is_prompt"] for t in run["tokens"]) <= s["max_new_tokens"]
            saes = max(1, len(run["meta"].get("saes", ())))  # feature_k per SAE read
            assert all(len(t["features"]) <= s["feature_k"] * saes for t in run["tokens"])
    assert finished > len(cases) // 2, finished  # most cases ran, clamped: their settings were checked
    assert app.proc.poll() is None
    print(f"\nhostile API cases: {len(cases)} calls; per input: {counts}")


def test_endoftext_typed_literally_is_the_special_token(client):
    out = call(client, prompt="Hello<|endoftext|>world", max_tokens=3, temperature=0)
    run = out[RUN]
    prompt_tokens = [t for t in run["tokens"] if t["is_prompt"]]
    assert [t["text"] for t in prompt_tokens] == ["Hello", "<|endoftext|>", "world"]
    assert prompt_tokens[1]["token_id"] == 50256
    assert sum(not t["is_prompt"] for t in run["tokens"]) == 3  # a typed one does not end the run


def test_context_window_is_respected(client):
    out = call(client, prompt=" a" * 250, max_tokens=MAX_NEW_TOKENS)  # BOS + 250 tokens: room for 5
    run = out[RUN]
    assert sum(not t["is_prompt"] for t in run["tokens"]) == 5
    assert run["tokens"][-1]["position"] == 255
    assert "context window of 256 tokens is full" in out[STATUS]


def _raw_call(app, payload: str) -> list:
    """POST to the REST API with a hand-written JSON body (NaN and Infinity are
    not JSON, so gradio_client refuses to send them); the final SSE data line."""
    req = urllib.request.Request(f"{app.url}gradio_api/call/generate", data=payload.encode(),
                                 headers={"Content-Type": "application/json"})
    event_id = json.loads(urllib.request.urlopen(req, timeout=30).read())["event_id"]
    with urllib.request.urlopen(f"{app.url}gradio_api/call/generate/{event_id}", timeout=60) as resp:
        body = resp.read().decode()
    events = [line for line in body.splitlines() if line.startswith("event:")]
    assert events[-1] == "event: complete", body[-2000:]
    return json.loads([line for line in body.splitlines() if line.startswith("data:")][-1][5:])


@pytest.mark.parametrize("value, words", [("NaN", "is not a number"), ("Infinity", "clamped to 2"),
                                          ("-Infinity", "clamped to 0"),
                                          ('"\\ud800 lone surrogate"', "removed 1 control character")])
def test_raw_json_nan_infinity_and_lone_surrogates(app, value, words):
    """What gradio_client refuses to send (not JSON, not UTF-8), sent by hand."""
    if value.startswith('"'):
        body = json.dumps({"data": args()}).replace('"The capital of France is"', value, 1)
    else:
        body = json.dumps({"data": args()}).replace("0.8", value, 1)
    assert value in body
    status = [v for v in _raw_call(app, body) if isinstance(v, str) and is_status(v)]
    assert len(status) == 1 and words in status[0], status


# ---------------------------------------------------------------- 3. concurrency

SESSIONS = [("The capital of France is", 11), ("def fibonacci(n):", 12),
            ("In 1969, the first person to walk on the Moon was", 13), ("She opened the letter and", 14)]
RUN_SETTINGS = {"max_tokens": 24, "temperature": 0.9, "top_k": 0, "top_p": 1.0, "feature_k": 8}
SWITCH = {"prompt": "A different SAE, loaded mid-run", "seed": 15, "sae_id": "blocks.2.hook_resid_pre"}


def test_sessions_at_once_each_get_their_own_run(app, client):
    solo = {p: call(client, prompt=p, seed=s, **RUN_SETTINGS)[RUN] for p, s in SESSIONS}
    results: dict[str, dict] = {}
    clients = [new_client(app) for _ in range(len(SESSIONS) + 1)]
    started = threading.Event()
    barrier = threading.Barrier(len(SESSIONS))

    def session(c, over, wait_for_others=False):
        if wait_for_others:
            started.wait(30)  # switch the SAE while the others are generating
        else:
            barrier.wait(30)
        job = c.submit(*args(**{**RUN_SETTINGS, **over}), api_name="/generate")
        while not job.done():  # (that they ran at once is read from the server's step times below)
            if job.outputs():
                started.set()
            time.sleep(0.01)
        results[over["prompt"]] = job.result()[RUN]

    threads = [threading.Thread(target=session, args=(c, {"prompt": p, "seed": s}))
               for c, (p, s) in zip(clients, SESSIONS)]
    threads.append(threading.Thread(target=session, args=(clients[-1], SWITCH, True)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert len(results) == len(SESSIONS) + 1
    for prompt, _ in SESSIONS:
        run = results[prompt]
        assert run["meta"]["prompt"] == prompt and run["meta"]["sae_id"] == BASE["sae_id"]
        # same seed -> same tokens and features; values to 1e-4 (the engine may step
        # runs together through one batched product, which rounds differently: ~1e-6)
        assert_same_run(run, solo[prompt])
        # the graph holds this session's tokens only
        assert [(e["source"], e["target"], e["count"]) for e in run["edges"]] == \
            [(e["source"], e["target"], e["count"]) for e in solo[prompt]["edges"]]
        assert all(abs(e["weight"] - f["weight"]) <= 1e-4 for e, f in zip(run["edges"], solo[prompt]["edges"]))
        fired = {f["index"] for t in run["tokens"] for f in t["features"]}
        assert {int(k) for k in run["labels"]} == fired
    switched = results[SWITCH["prompt"]]
    assert switched["meta"]["sae_id"] == SWITCH["sae_id"]
    again = call(client, **{**RUN_SETTINGS, **SWITCH})[RUN]
    assert_same_run(switched, again)
    # Several sessions really generated at once, proven from the server's side: the
    # engine's per-token timestamps of these runs interleave (strictly one run after
    # another would give one alternation per pair).
    runs = [r for r in client.predict(api_name="/engine_stats")["runs"] if len(r["step_times"]) >= 10][-5:]
    interleaved = [(i, j, alternations(a["step_times"], b["step_times"]))
                   for i, a in enumerate(runs) for j, b in enumerate(runs) if i < j]
    print(f"\nconcurrent sessions: {len(results)} at once (one switching SAE); "
          f"alternations between runs' steps: {[n for _, _, n in interleaved]}")
    assert sum(n >= 4 for _, _, n in interleaved) >= 3, interleaved


def alternations(a: list[float], b: list[float]) -> int:
    """How often the merged time order switches between the steps of a and of b."""
    merged = [name for _, name in sorted([(t, 0) for t in a] + [(t, 1) for t in b])]
    return sum(x != y for x, y in zip(merged, merged[1:]))


def test_the_app_chooses_torch_threads_by_measurement(client):
    """At start-up the app timed real steps of the default pair with every
    sensible thread count (while frames were built beside them) and runs the
    fastest; /engine_stats shows the choice and the measurements."""
    from axon_core.engine import usable_cpus
    from axon_core.threads import candidate_counts

    stats = client.predict(api_name="/engine_stats")
    table = stats["threads"]
    assert stats["torch_threads"] == table["chosen"] and table["chosen"] in candidate_counts(usable_cpus())
    if usable_cpus() > 1:
        assert table["source"] == "measured"
        assert set(table["startup_ms"]) == {str(n) for n in candidate_counts(usable_cpus())}
        fastest = min(table["startup_ms"], key=lambda n: (table["startup_ms"][n], int(n)))
        assert table["switches"] or int(fastest) == table["chosen"]


def test_a_sessions_new_run_supersedes_its_old_one(app):
    """One session holds at most one run: its next run stops the previous one."""
    c = new_client(app)
    first = c.submit(*args(prompt="The first run of this session", max_tokens=MAX_NEW_TOKENS, seed=1),
                     api_name="/generate")
    t0 = time.monotonic()
    while not first.outputs() and time.monotonic() - t0 < 30:
        time.sleep(0.01)
    second = call(c, prompt="The second run", max_tokens=4, seed=2)
    first.result(timeout=60)
    assert second[RUN]["meta"]["prompt"] == "The second run"
    first_outputs = first.outputs()
    assert first_outputs and not any(is_run(o[RUN]) for o in first_outputs)  # stopped before its last frame
    assert "tokens" in first_outputs[-1][STATUS]


# ---------------------------------------------------------------- 4. faults


def _server_runs(client, known: set, n: int = 1) -> list[dict]:
    """The ``n`` newest runs /engine_stats reports that are not in ``known``, once all have ended
    (the engine reports its last 64 runs)."""
    for _ in range(600):
        fresh = [r for r in client.predict(api_name="/engine_stats")["runs"] if r["id"] not in known]
        if len(fresh) >= n and all(r["state"] not in ("queued", "running") for r in fresh[-n:]):
            known.update(r["id"] for r in fresh)
            return fresh[-n:]
        time.sleep(0.05)
    raise AssertionError(f"not {n} new runs ended: {fresh}")


def _stopped_by_stop(run: dict) -> bool:
    """The server's counts say Stop ended ``run``: cancelled at most one token after its
    last viewer left, or (a Stop that raced the last token) done as that token came."""
    at = run["steps_at_release"]
    if run["state"] == "cancelled":
        return at is not None and at <= run["steps"] <= at + 1
    return run["state"] == "done" and (at is None or at >= run["steps"] - 1)


def test_stop_50_times_memory_returns_and_next_run_is_clean(app, client):
    proc = psutil.Process(app.proc.pid)
    ref = call(client, prompt="Stop me if you can", seed=7, max_tokens=8)
    long_run = args(prompt="A long run that is stopped", seed=3, max_tokens=MAX_NEW_TOKENS)
    known = {r["id"] for r in client.predict(api_name="/engine_stats")["runs"]}

    def stop_once(check: bool = True) -> tuple[bool, dict | None]:
        job = client.submit(*long_run, api_name="/generate")
        while not job.outputs() and not job.done():
            time.sleep(0.005)
        mid_run = bool(job.outputs()) and not job.done()
        job.cancel()
        return mid_run, (_server_runs(client, known)[0] if check else None)

    for _ in range(3):  # warm-up: allocator pools and caches reach their working size
        stop_once()
    # Stop really stops the run on the server (its own counts, no clock): a Stop
    # pressed while frames stream ends the run at its next engine turn.
    checked = 0
    for _ in range(10):
        mid_run, run = stop_once()
        assert _stopped_by_stop(run), run
        checked += mid_run and run["state"] == "cancelled" and run["steps"] < MAX_NEW_TOKENS
        if checked == 3:
            break
    assert checked == 3
    rss_before = proc.memory_info().rss
    for _ in range(50):
        stop_once(check=False)
    runs = _server_runs(client, known, 50)  # read once: the engine reports its last 64 runs
    rss_after = proc.memory_info().rss
    after = call(client, prompt="Stop me if you can", seed=7, max_tokens=8)
    cancelled = sum(r["state"] == "cancelled" for r in runs)
    print(f"\nstop x50: {cancelled} cancelled mid-run; RSS before {rss_before / 2**20:.1f} MiB, "
          f"after {rss_after / 2**20:.1f} MiB ({(rss_after - rss_before) / 2**20:+.1f} MiB)")
    assert all(map(_stopped_by_stop, runs)), [r for r in runs if not _stopped_by_stop(r)]
    assert cancelled >= 1
    assert rss_after - rss_before < 150 * 2**20
    assert_same_run(after[RUN], ref[RUN])  # same tokens; activations to float rounding (threads are re-chosen under load)
    assert not any(w in after[STATUS] for w in FAILURE_WORDS)
    assert app.proc.poll() is None


@pytest.mark.parametrize("mode", ["hold", "close", "error", "garbage", "ratelimit"])  # hold first: no backoff yet
def test_neuronpedia_down_or_slow_runs_still_complete(app, client, neuronpedia, mode):
    neuronpedia.mode = mode
    try:
        out = client.submit(*args(prompt=f"Neuronpedia is {mode} now, {random.random()}", max_tokens=6, seed=1),
                            api_name="/generate").result(timeout=120)
        assert out[RUN] and sum(not t["is_prompt"] for t in out[RUN]["tokens"]) == 6
        if mode == "hold":  # the whole run ended while its label requests were still unanswered
            print(f"\nrun ended with {neuronpedia.held} label requests held")
            assert neuronpedia.held >= 1
        if mode in ("close", "error", "garbage"):
            deadline = time.monotonic() + 10  # fetches fail in the background; the next frame says so
            status = out[STATUS]
            while "Neuronpedia unreachable" not in status and time.monotonic() < deadline:
                time.sleep(0.3)
                status = call(client, prompt=f"and again {random.random()}", max_tokens=1)[STATUS]
            assert "labels: Neuronpedia unreachable, showing feature numbers" in status
        if mode == "ratelimit":  # a 429 pauses every fetch for Retry-After (30 s)
            status = call(client, prompt=f"and again {random.random()}", max_tokens=1)[STATUS]
            deadline = time.monotonic() + 10
            while "rate limit" not in status and time.monotonic() < deadline:
                time.sleep(0.3)
                status = call(client, prompt=f"and again {random.random()}", max_tokens=1)[STATUS]
            assert "labels: Neuronpedia rate limit, paused" in status
        assert "label cache cannot be written" in out[STATUS]  # AXON_LABEL_CACHE is not writable
    finally:
        neuronpedia.let_go()


def test_label_cache_unwritable_status_at_start(app):
    page = urllib.request.urlopen(app.url, timeout=10).read().decode()
    assert "AXON" in page
    config = urllib.request.urlopen(f"{app.url}config", timeout=10).read().decode()
    assert "label cache cannot be written" in config  # the status line the page opens with


# ---------------------------------------------------------------- 5. numbers


def test_streamed_numbers_match_plain_transformerlens_and_saelens(app, client, pair):
    """The run JSON the API returns (another process), recomputed from scratch:
    one TransformerLens run_with_cache over the final sequence and SAELens's
    sae.encode (``pair`` holds the HookedTransformer.from_pretrained and
    SAE.from_pretrained objects of the same checkpoints), no AXON code in the loop."""
    k, threshold = 8, 0.1
    run = call(client, prompt="The capital of France is", seed=3, max_tokens=10, temperature=1.0,
               top_k=0, top_p=1.0, repetition_penalty=1.0, feature_k=k, threshold=threshold)[RUN]
    model, sae = pair.model, pair.sae
    assert (run["meta"]["release"], run["meta"]["sae_id"]) == (pair.choice.release, pair.choice.sae_id)
    tokens = torch.tensor([model.tokenizer.bos_token_id] + [t["token_id"] for t in run["tokens"]])
    assert model.to_string(tokens[1:6]) == "The capital of France is"
    ref = Reference.run(model, tokens, {None: (sae.cfg.metadata.hook_name, sae)})
    counts = check_steps(ref, rows_of_json(run), k, threshold)
    assert run["tokens"][-1]["next_token_id"] is None
    assert counts["attributed"] > 50 and counts["largest"] > 1e-2


def test_a_run_of_several_layers_reads_them_all_and_changes_nothing_else(client, pairs):
    """layers=[2, 5, 11] with the block-8 SAE: one run reads four SAEs; the
    tokens and the block-8 features are exactly those of the run of one SAE,
    and every layer's features and attributions are those of tests/reference.py."""
    over = dict(prompt="The capital of France is", seed=4, max_tokens=6, temperature=1.0, top_k=0, top_p=1.0,
                repetition_penalty=1.0, feature_k=6, threshold=0.1)
    one = call(client, **over)[RUN]
    out = call(client, layers=[11, 2, 5], **over)
    deep = out[RUN]
    assert "layers 2, 5, 8, 11" in out[STATUS]
    assert [s["layer"] for s in deep["meta"]["saes"]] == [8, 2, 5, 11]
    assert [s["neuronpedia_id"] for s in deep["meta"]["saes"]] == [f"gpt2-small/{x}-res-jb" for x in (8, 2, 5, 11)]
    assert [t["token_id"] for t in deep["tokens"]] == [t["token_id"] for t in one["tokens"]]
    for a, b in zip(one["tokens"], deep["tokens"]):
        primary = [(f["index"], f["activation"]) for f in b["features"] if f["layer"] == 8]
        assert [i for i, _ in primary] == [f["index"] for f in a["features"]]
        assert all(abs(x - f["activation"]) <= 1e-4 for (_, x), f in zip(primary, a["features"]))
    assert {f["layer"] for t in deep["tokens"] for f in t["features"]} == {2, 5, 8, 11}
    layer_pairs = {layer: pairs.get("gpt2-small-res-jb", f"blocks.{layer}.hook_resid_pre") for layer in (8, 2, 5, 11)}
    model = layer_pairs[8].model
    tokens = [model.tokenizer.bos_token_id] + [t["token_id"] for t in deep["tokens"]]
    ref = Reference.run(model, tokens, {layer: (p.hook_name, p.sae) for layer, p in layer_pairs.items()})
    counts = check_steps(ref, rows_of_json(deep), over["feature_k"], over["threshold"])
    assert all(n > len(deep["tokens"]) for n in counts["features"].values()), counts
    assert counts["attributed"] > 4 * (len(deep["tokens"]) - 1) and counts["largest"] > 1e-2
    assert any(k.startswith("2:") for k in deep["labels"])  # labels keyed by layer
    table = out[2]
    assert table["headers"][:2] == ["feature", "layer"] and {row[1] for row in table["data"]} <= {2, 5, 8, 11}
    # more layers than a run reads: the first ones kept, with a notice
    out = call(client, layers=[0, 2, 5, 11], **over)
    assert "layers: a run reads at most 4 SAEs; kept 0, 2, 5, 8" in out[STATUS]
    assert "SAE gpt2-small-res-jb / blocks.0.hook_resid_pre" in out[STATUS]  # not in this (offline) hub


def test_generate_watches_features_through_the_api(client):
    """``watch`` (the watched-features box): every token of the run JSON carries their exact activations."""
    run = call(client, max_tokens=3, watch="5, 9, x")[RUN]
    assert run["meta"]["watch"] == "5,9"
    assert run["tokens"] and all(len(t["watched"]) == 2 for t in run["tokens"])
    assert "watched" not in call(client, max_tokens=3)[RUN]["tokens"][0]  # the same request unwatched


def test_find_feature_through_the_api(client, neuronpedia):
    """``/find_feature`` (the "Find a feature" box): results for a word, each with its layer, index, label,
    whether it fired and where it came from; a hostile query answers without error."""
    rows = []
    for _ in range(50):  # the labels arrive in the background (memory only here: the cache is unwritable)
        table, note = client.predict("label", "gpt2-small-res-jb", "blocks.8.hook_resid_pre", api_name="/find_feature")
        rows = table["data"]
        if rows:
            break
        time.sleep(0.2)
    assert table["headers"] == ["layer", "feature", "label", "fired", "peak", "tokens", "source"]
    assert rows and all(r[0] == 8 and r[1] % 3 == 0 and r[2] == f"label {r[1]}" for r in rows), rows
    # fired or not in this client's latest run (the module's client ran others before): said consistently
    assert all((r[3], r[5] > 0) in (("yes", True), ("no", False)) for r in rows), rows
    table, note = client.predict('"*) OR NEAR(' + "x" * 10_000, "gpt2-small-res-jb", "blocks.8.hook_resid_pre",
                                 api_name="/find_feature")
    assert table["data"] == [] and isinstance(note, str)


def test_generate_forks_through_the_api(client):
    """``fork`` ("position:token_id"): the run JSON carries the fork, its tokens those of
    the same request whose prompt is the prefix plus the forced token (temperature 0);
    the comparison output shows both texts; a run without it is unchanged."""
    run = call(client, max_tokens=5, temperature=0)[RUN]
    n_prompt = 1 + sum(t["is_prompt"] for t in run["tokens"])
    q = n_prompt + 1
    out = call(client, max_tokens=5, temperature=0, fork=f"{q}:13")
    forked = out[RUN]
    assert tokens_of({"tokens": forked["tokens"]}) == tokens_of(run)  # the run itself is as without the fork
    f = forked["fork"]
    assert (f["position"], f["token_id"]) == (q, 13) and f["tokens"][0]["token_id"] == 13
    prefix_text = "".join(t["text"] for t in run["tokens"] if t["position"] < q) + f["tokens"][0]["text"]
    fresh = call(client, prompt=prefix_text, max_tokens=5 - (q - n_prompt) - 1, temperature=0)[RUN]
    assert [t["token_id"] for t in fresh["tokens"] if t["is_prompt"]] == \
        [t["token_id"] for t in run["tokens"] if t["position"] < q] + [13]  # the same prefix, re-read
    assert [t["token_id"] for t in f["tokens"][1:]] == [t["token_id"] for t in fresh["tokens"] if not t["is_prompt"]]
    assert any("axon-compare-fork" in v for v in out if isinstance(v, str))
    assert "fork" not in call(client, max_tokens=5, temperature=0)[RUN]
