"""Hardening, in-process: the generation function and the app's input handling
under any input (hypothesis), the limits, the Hub unreachable, downloads that
fail, caches that cannot be written, and concurrent runs on one model.

The end-to-end side (a real server driven through gradio_client) is in
tests/test_app_api.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import inspect
import math
import os
import re
import socket
import tempfile
import threading
import time
import unicodedata
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from axon_core import hub, loading
from axon_core.catalogue import DEFAULT_RELEASE, DEFAULT_SAE_ID, load_catalogue
from axon_core.export import slug
from axon_core.generation import MIN_TEMPERATURE, GenerationSettings, PromptError, generate
from axon_core.loading import LoadError, PairCache
from axon_core.page.downloads import write_download
from axon_core.page.request import request_from_inputs
from axon_core.page.settings import env_number
from axon_core.share import Limits, parse_query

QUICK = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))
SETTING_KEYS = ["temperature", "top_k", "top_p", "repetition_penalty", "max_tokens", "seed",
                "feature_k", "threshold", "stop_at_eos"]
EXTREMES = ["nan", "-nan", "inf", "-inf", "1e999", "-1e999", "1e-320", "5e-324", "-0", "0", "1", "-1",
            "2", "0.5", "1e308", "-1e308", "2147483648", "9" * 120, "abc", "", " ", "0x10", "1_0", "٣",
            "true", "off"]
numberish = st.one_of(st.sampled_from(EXTREMES), st.floats().map(repr), st.integers(-10**12, 10**12).map(str))
SPECIAL_PROMPTS = ["", " ", "\n\t\r ", "<|endoftext|>", "a<|endoftext|>b", "🧠🔥✨", "שלום עולם", "مرحبا",
                   "\u202eevil\u202c", "\x00\x1b[31m\x7f", "\ud800 lone surrogate", "x" * 10_000,
                   " hello" * 300, "Ω" * 300, "\u200b", "\r\n"]
prompts = st.one_of(st.text(st.characters(exclude_categories=()), max_size=40), st.sampled_from(SPECIAL_PROMPTS))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny-model runs: one intra-op thread is faster, and on a busy 2-core
    machine much faster (no spin-waiting); restored after this module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _finite(x) -> bool:
    return isinstance(x, float) and math.isfinite(x)


# ---------------------------------------------------------------- the generation function


@settings(max_examples=30, **QUICK)
@given(prompt=prompts, params=st.dictionaries(st.sampled_from(SETTING_KEYS), numberish, max_size=9))
def test_generate_any_prompt_any_reachable_settings(pair, prompt, params):
    """Every prompt and every setting a link or the API can produce: either a
    PromptError for people before the first step, or a well-formed run."""
    s = parse_query(params, Limits(max_new_tokens=3))[0].settings
    n_ctx = pair.model.cfg.n_ctx
    try:
        steps = list(generate(pair, prompt, s))
    except PromptError as err:
        assert str(err) and "Traceback" not in str(err)
        return
    assert steps, prompt
    assert [st_.position for st_ in steps] == list(range(1, len(steps) + 1))  # BOS not reported
    new = [st_ for st_ in steps if not st_.is_prompt]
    assert all(st_.is_prompt for st_ in steps[: len(steps) - len(new)])
    assert len(new) <= s.max_new_tokens and steps[-1].position < n_ctx
    for a, b in zip(steps, steps[1:]):
        assert a.next_token_id == b.token_id and a.notice is None
    for step in steps:
        feats = step.features
        assert len(feats) <= s.feature_k
        assert all(_finite(f.activation) and f.activation > s.activation_threshold for f in feats)
        assert [f.activation for f in feats] == sorted((f.activation for f in feats), reverse=True)
        if step.next_token_id is None:
            assert all(f.attribution is None for f in feats)
        else:
            assert all(_finite(f.attribution) for f in feats)
    for step in new:
        assert 0 < step.prob <= 1 and 0 < step.sampled_prob <= 1
        if s.temperature < MIN_TEMPERATURE:
            assert step.sampled_prob == 1.0  # greedy


@pytest.mark.parametrize("prompt", SPECIAL_PROMPTS)
def test_special_prompts(pair, prompt):
    s = GenerationSettings(max_new_tokens=2, seed=1, stop_at_eos=True)
    model, n_ctx = pair.model, pair.model.cfg.n_ctx
    if not prompt.strip():
        with pytest.raises(PromptError, match="empty"):
            next(generate(pair, prompt, s))
        return
    if "\ud800" in prompt:
        with pytest.raises(PromptError, match="could not be tokenized"):
            next(generate(pair, prompt, s))
        return
    n_tokens = model.to_tokens(prompt, truncate=False).shape[1]
    if n_tokens >= n_ctx:  # refused with its real length, never cut to the window
        with pytest.raises(PromptError, match=f"The prompt is {n_tokens} tokens long"):
            next(generate(pair, prompt, s))
        assert n_tokens > n_ctx or prompt == " hello" * 300
        return
    steps = list(generate(pair, prompt, s))
    ids = [x.token_id for x in steps if x.is_prompt]
    assert ids == model.to_tokens(prompt, prepend_bos=False)[0].tolist()  # exactly the tokenizer's tokens
    assert model.to_string(ids) == model.to_string(model.to_tokens(prompt, prepend_bos=False)[0])
    # Each step shows its own token (a byte-level BPE piece of an emoji shows as U+FFFD).
    assert [x.text for x in steps] == [model.tokenizer.decode([x.token_id]) for x in steps]
    assert sum(not x.is_prompt for x in steps) == 2 or steps[-1].notice  # a typed <|endoftext|> does not stop it
    if "<|endoftext|>" in prompt:
        ids = [x.token_id for x in steps if x.is_prompt]
        assert 50256 in ids and "<|endoftext|>" in [x.text for x in steps]


def test_tiny_temperature_and_top_p_sample_greedily(pair):
    base = GenerationSettings(max_new_tokens=6, temperature=0.0, seed=5, stop_at_eos=False)
    greedy = [x.token_id for x in generate(pair, "The capital of France is", base)]
    for change in ({"temperature": 1e-320}, {"temperature": 5e-324}, {"temperature": float("nan")}):
        got = [x.token_id for x in generate(pair, "The capital of France is", dataclasses.replace(base, **change))]
        assert got == greedy, change
    # top_p that float32 rounds to 0 keeps the top token instead of dropping every one
    for top_p in (1e-320, 1e-45, 1e-9):
        s = dataclasses.replace(base, temperature=1.0, top_p=top_p, top_k=0, repetition_penalty=1.0)
        assert [x.token_id for x in generate(pair, "The capital of France is", s)][-6:] == greedy[-6:]


def test_concurrent_runs_on_transformerlens_stepper_do_not_mix(pair, monkeypatch):
    """The stepper for non-GPT-2 architectures hooks the shared model for each
    forward: two sessions at once must still each get their solo run."""
    from axon_core import residuals

    monkeypatch.setattr(residuals.FastWeights, "supports", staticmethod(lambda model: False))
    tl_pair = dataclasses.replace(pair, fast_weights=None)
    s = GenerationSettings(max_new_tokens=10, temperature=1.0, top_k=0, seed=3, stop_at_eos=False)
    prompts_ = ["The capital of France is", "def fibonacci(n):", "She opened the letter"]
    solo: dict[str, list] = {}
    # (in a worker thread too: torch's intra-op thread count is per thread)
    t = threading.Thread(target=lambda: solo.update({p: list(generate(tl_pair, p, s)) for p in prompts_}))
    t.start()
    t.join(60)
    out: dict[str, list] = {}
    barrier = threading.Barrier(len(prompts_))

    def run(p):
        barrier.wait()
        steps = []
        for step in generate(tl_pair, p, s):
            steps.append(step)
            time.sleep(0)  # let the others in between tokens
        out[p] = steps

    threads = [threading.Thread(target=run, args=(p,)) for p in prompts_]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for p in prompts_:
        assert_same_run(out[p], solo[p])


def assert_same_run(got, want, tol=1e-4):
    """The same tokens and features; activations and attributions equal up to
    float rounding (torch's intra-op threads may split a sum differently when
    several runs compute at once: ~1e-6 relative)."""
    assert [(s.position, s.token_id, s.next_token_id, [f.index for f in s.features]) for s in got] == \
        [(s.position, s.token_id, s.next_token_id, [f.index for f in s.features]) for s in want]
    for a, b in zip(got, want):
        for f, g in zip(a.features, b.features):
            assert abs(f.activation - g.activation) <= tol
            assert (f.attribution is None) == (g.attribution is None)
            assert f.attribution is None or abs(f.attribution - g.attribution) <= tol


# ---------------------------------------------------------------- limits


def test_limits_come_from_the_environment():
    assert Limits.from_env({}) == Limits()
    env = {"AXON_MAX_PROMPT_CHARS": "300", "AXON_MAX_NEW_TOKENS": "16"}
    lim = Limits.from_env(env)
    assert (lim.max_prompt_chars, lim.max_new_tokens) == (300, 16)
    for bad in ("abc", "0", "-5", "", "1e3", "nan"):
        lim = Limits.from_env({"AXON_MAX_PROMPT_CHARS": bad, "AXON_MAX_NEW_TOKENS": bad})
        assert (lim.max_prompt_chars, lim.max_new_tokens) == (2000, 200), bad
    req, notices = parse_query({"prompt": "y" * 10_000, "max_tokens": "100000"}, Limits.from_env(env))
    assert len(req.prompt) == 300 and req.settings.max_new_tokens == 16
    assert notices == ["prompt truncated to 300 characters", "max_tokens 100000 clamped to 16"]


def test_a_number_too_long_to_read_is_clamped_not_ignored():
    req, notices = parse_query({"seed": "9" * 120, "top_k": "-" + "9" * 300, "temperature": "9" * 5000}, Limits())
    assert (req.settings.seed, req.settings.top_k, req.settings.temperature) == (2**31 - 1, 0, 2.0)
    assert len(notices) == 3 and all("clamped to" in n and len(n) < 100 for n in notices)


# ---------------------------------------------------------------- the app, in-process


class _Request:
    """What the page's from_query reads from a gr.Request."""

    def __init__(self, params: dict, session_hash: str | None = None):
        self.query_params, self.headers, self.session_hash = params, {}, session_hash


def _inputs(app_module, **over):
    values = {"prompt": "The capital of France is", "model": "gpt2-small", "release": DEFAULT_RELEASE,
              "sae_id": DEFAULT_SAE_ID, "temperature": 0.8, "top_k": 50, "top_p": 0.95,
              "repetition_penalty": 1.1, "max_tokens": 1, "seed": 0, "feature_k": 12, "threshold": 0.1,
              "steer": "", "edge_kind": "npmi"}
    values.update(over)
    return list(values.values())


def _sliders(app_module):
    a = app_module
    return {"temperature": a.temperature, "top_k": a.top_k, "top_p": a.top_p,
            "repetition_penalty": a.repetition_penalty, "max_new_tokens": a.max_tokens,
            "feature_k": a.feature_k, "activation_threshold": a.threshold}


def test_sliders_cover_exactly_what_the_validator_allows(app_module):
    limits = app_module.LIMITS
    for name, slider in _sliders(app_module).items():
        lo, hi = limits.range_of(name)
        assert slider.maximum == hi, name
        assert slider.minimum <= lo if name != "top_p" else slider.minimum == 0, name
    assert app_module.prompt.max_length == limits.max_prompt_chars


query_value = st.one_of(numberish, st.text(st.characters(exclude_categories=()), max_size=30),
                        st.sampled_from(["gpt2-small", DEFAULT_RELEASE, "blocks.2.hook_resid_pre", "nope",
                                         "gemma-2-2b", "gpt2-small-hook-z-kk", "1:2,3:nan", "1", "2,5,11",
                                         "0,1,2,3,4,5", "99", "2,x"]))
QUERY_KEYS = ["prompt", "model", "release", "sae_id", "steer", "autorun", "edge_kind", "at", "embed",
              "layers", "watch", "fork"] + SETTING_KEYS


@settings(max_examples=150, **QUICK)
@given(st.dictionaries(st.sampled_from(QUERY_KEYS), query_value, max_size=12))
def test_any_link_fills_the_page_with_values_it_can_show(app_module, params):
    """A share link (URL query parameters): every value lands inside its
    component, the dropdowns on catalogue entries, and Generate then accepts
    them as they are (no notices)."""
    with contextlib.redirect_stdout(io.StringIO()):
        out = app_module.HANDLERS.from_query(_Request(params))
    (prompt, model, release, sae_id, temperature, top_k, top_p, rep, max_tokens, seed, feature_k,
     threshold, steer, autorun, at, embed_open, layers, watch, fork) = out
    assert isinstance(watch, str) and len(watch) < 400
    assert fork is None or (isinstance(fork, tuple) and len(fork) == 2 and all(type(x) is int for x in fork))
    # layers: only those the picked SAE's release has (a run of at most max_layers SAEs)
    assert layers["choices"] == app_module.HANDLERS.layer_choices(release["value"], sae_id["value"])
    assert set(layers["value"]) <= set(layers["choices"]) and len(layers["value"]) <= app_module.LIMITS.max_layers
    assert at is None or (isinstance(at, int) and 0 <= at <= 10**6)
    assert isinstance(embed_open, str) and "<script" not in embed_open.lower()
    assert (embed_open.startswith('<a class="axon-open" href="http') and "embed=" not in embed_open) or not embed_open
    values = dict(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=rep,
                  max_new_tokens=max_tokens, feature_k=feature_k, activation_threshold=threshold)
    for name, slider in _sliders(app_module).items():
        assert slider.minimum <= values[name] <= slider.maximum, (name, values[name])
    assert isinstance(seed, int) and 0 <= seed < 2**31
    cat = app_module.CATALOGUE
    assert model in cat.models()
    assert release["value"] in release["choices"] and release["value"] in cat.by_release
    assert cat.by_release[release["value"]].model == model or params.get("model") != model
    assert sae_id["value"] in sae_id["choices"] == cat.by_release[release["value"]].sae_ids()
    assert isinstance(prompt, str) and len(prompt) <= app_module.prompt.max_length
    assert isinstance(autorun, bool)
    req, notices = request_from_inputs(app_module.LIMITS, prompt, model, release["value"], sae_id["value"], temperature,
                                                   top_k, top_p, rep, max_tokens, seed, feature_k, threshold, steer,
                                                   layers["value"], watch)
    assert notices == [] and req.prompt == prompt and list(req.layers) == sorted(layers["value"])


any_value = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), numberish,
                      st.text(st.characters(exclude_categories=()), max_size=30),
                      st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@settings(max_examples=150, **QUICK)
@given(st.lists(any_value, min_size=13, max_size=13))
def test_any_api_values_are_clamped_into_the_sliders(app_module, values):
    """What an API call can send for each of Generate's inputs (any JSON value)."""
    req, notices = request_from_inputs(app_module.LIMITS, *values)
    s = req.settings
    for name, slider in _sliders(app_module).items():
        v = getattr(s, name)
        assert slider.minimum <= v <= slider.maximum, (name, v)
    assert 0 < s.top_p <= 1 and 0 <= s.seed < 2**31
    assert len(req.prompt) <= app_module.LIMITS.max_prompt_chars
    assert all(isinstance(n, str) and len(n) <= 160 for n in notices)


def test_queue_lets_several_sessions_generate_at_once(app_module):
    demo = app_module.demo
    runs = [fn for fn in demo.fns.values()
            if getattr(fn.fn, "__name__", "") in ("generate_for_session", "generate_for_page", "autorun_generation")]
    assert len(runs) == 5  # Generate, Enter, Steer, the share link's autorun, and the API's /generate
    assert {fn.concurrency_id for fn in runs} == {"generate"}  # one pool of workers for all runs
    assert all(fn.concurrency_limit == "default" for fn in runs)
    assert not any(fn.preprocess for fn in runs if fn.fn.__name__ != "autorun_generation")
    if "AXON_CONCURRENCY" not in os.environ:
        assert app_module.SERVICES.settings.concurrency == (1 if app_module.SERVICES.settings.zero_gpu else 16)
    assert demo._queue.default_concurrency_limit == app_module.SERVICES.settings.concurrency
    assert demo._queue.max_size == app_module.SERVICES.settings.queue_size
    named = [fn for fn in demo.fns.values() if fn.api_name == "generate"]
    assert len(named) == 1 and named[0].fn.__name__ == "generate_for_session"


@pytest.mark.parametrize("raw, workers, seconds", [
    (None, 2, 180.0), ("", 2, 180.0), ("3", 3, 3.0), ("0", 2, 180.0), ("-1", 2, 180.0), ("abc", 2, 180.0),
    ("nan", 2, 180.0), ("2.5", 2, 2.5), ("1e999", 2, math.inf), (" 4 ", 4, 4.0)])
def test_bad_settings_in_the_environment_keep_the_default(app_module, monkeypatch, raw, workers, seconds):
    """AXON_CONCURRENCY / AXON_QUEUE_SIZE (int) and AXON_MAX_RUN_SECONDS (float):
    an unreadable value never stops the app from starting."""
    if raw is None:
        monkeypatch.delenv("AXON_TEST_NUMBER", raising=False)
    else:
        monkeypatch.setenv("AXON_TEST_NUMBER", raw)
    assert env_number("AXON_TEST_NUMBER", 2, 1, int) == workers
    assert env_number("AXON_TEST_NUMBER", 180.0, 1.0) == seconds


def test_a_sessions_new_run_supersedes_its_old_one_in_process(app_module):
    req = _Request({}, session_hash="session-a")
    other = _Request({}, session_hash="session-b")
    first = app_module.HANDLERS.generate_for_session(req, app_module.gr.Progress(), *_inputs(app_module, max_tokens=20))
    bystander = app_module.HANDLERS.generate_for_session(other, app_module.gr.Progress(), *_inputs(app_module, max_tokens=3))
    next(first)
    next(bystander)
    second = app_module.HANDLERS.generate_for_session(req, app_module.gr.Progress(), *_inputs(app_module, max_tokens=2))
    frames = list(second)
    assert list(first) == []  # superseded: ends without another frame
    assert frames and isinstance(frames[-1][5], dict) and frames[-1][5]["schema"].startswith("axon-run/")
    assert isinstance(list(bystander)[-1][5], dict)  # another session is untouched
    assert len(app_module.HANDLERS.session_runs) == 0  # nothing left behind


def test_exports_unwritable_disk_still_finishes_the_run(app_module, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(blocker))
    with contextlib.redirect_stdout(io.StringIO()):
        frames = list(app_module.HANDLERS.run_generation(*_inputs(app_module, max_tokens=2)))
    last = frames[-1]
    assert last[5]["schema"].startswith("axon-run/")  # the run itself, and its JSON, are intact
    assert last[6]["interactive"] is True and last[7]["interactive"] is True  # downloads are offered
    run = last[4]
    assert write_download(run, "json") is None  # asked for: the disk refuses, no crash
    assert app_module.HANDLERS.prepare_download(run, "html") is None  # no file: the page starts no download


def test_downloads_are_written_on_demand_and_old_ones_removed(app_module, monkeypatch, tmp_path):
    """Nothing is written for a run nobody downloads; a download is written when
    asked for, and folders older than an hour go first."""
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    root = tmp_path / f"axon-exports-{os.getpid()}"
    with contextlib.redirect_stdout(io.StringIO()):
        last = list(app_module.HANDLERS.run_generation(*_inputs(app_module, max_tokens=1, seed=11)))[-1]
    assert not root.exists() and list(tmp_path.iterdir()) == []  # a run alone writes nothing
    old = root / "run-old"
    old.mkdir(parents=True)
    (old / "axon-graph.html").write_text("x")
    os.utime(old, (time.time() - 2 * app_module.EXPORT_MAX_AGE,) * 2)
    run = last[4]
    paths = [Path(app_module.HANDLERS.prepare_download(run, kind)["value"]) for kind in ("json", "html")]
    assert not old.exists()
    assert all(p.exists() and p.parent.parent == root for p in paths)
    # saved under the prompt, model and date (the browser takes the file's own name)
    prompt = "".join(s.shown for s in run.steps if s.is_prompt)
    assert [p.name[:-len(p.suffix)].rsplit("-", 1)[0] for p in paths] == \
        ["axon-" + slug(prompt) + "-" + slug(run.meta["model"])] * 2, paths
    assert [p.suffix for p in paths] == [".json", ".html"] and re.fullmatch(r"\d{8}", paths[0].stem[-8:])
    import json
    assert json.loads(paths[0].read_text())["tokens"] == last[5]["tokens"]
    assert "<script" in paths[1].read_text()


def test_runs_stop_at_the_time_cap(app_module, monkeypatch):
    """AXON_MAX_RUN_SECONDS: a run that reaches it ends with what it has, and says why."""
    monkeypatch.setattr(app_module.SERVICES.engine, "max_run_seconds", 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        last = list(app_module.HANDLERS.run_generation(*_inputs(app_module, max_tokens=50, seed=3)))[-1]
    assert "stopped: runs are limited to 0 s" in last[3]
    assert last[5]["schema"].startswith("axon-run/") and len(last[5]["tokens"]) < 50


def test_inspector_when_the_runs_sae_cannot_load_again(app_module, monkeypatch):
    with contextlib.redirect_stdout(io.StringIO()):
        run = list(app_module.HANDLERS.run_generation(*_inputs(app_module, max_tokens=2)))[-1][4]
    feature = run.steps[0].features[0].index

    def gone(*args, **kwargs):
        raise LoadError("Could not download SAE gpt2-small-res-jb / blocks.8.hook_resid_pre: offline.")

    monkeypatch.setattr(app_module.SERVICES.pairs, "get", gone)
    head = app_module.HANDLERS.inspect(run, feature)[0]
    assert head.startswith("Could not download SAE")


class _Labels:
    def __init__(self, **status):
        self._status = status

    def status(self):
        return dict(self._status)


@pytest.mark.parametrize("status, shown, hidden", [
    ({"reachable": False, "last_error": "URLError", "persistent": True},
     "labels: Neuronpedia unreachable, showing feature numbers", "cannot be written"),
    ({"reachable": True, "last_error": "an old one", "persistent": True}, None, "unreachable"),  # recovered
    ({"reachable": False, "paused_for": 29.6, "persistent": True}, "Neuronpedia rate limit, paused 30 s",
     "unreachable"),
    ({"reachable": None, "persistent": False}, "the label cache cannot be written", "unreachable"),
])
def test_status_line_says_what_is_wrong_with_labels(app_module, monkeypatch, status, shown, hidden):
    monkeypatch.setattr(app_module.SERVICES, "labels", _Labels(**status))
    line = app_module.HANDLERS.status_line()
    if shown:
        assert shown in line
    assert hidden not in line


def test_label_cache_unwritable_is_memory_only(tmp_path):
    from axon_core.labels import LabelService

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    svc = LabelService(cache_path=blocker / "sub" / "labels.sqlite", enabled=False)
    try:
        st_ = svc.status()
        assert st_["persistent"] is False and "not writable" in st_["message"]
        svc.put("gpt2-small/8-res-jb", {5: "European capitals"})
        assert svc.label("gpt2-small/8-res-jb", 5) == "European capitals"
    finally:
        svc.close()


# ---------------------------------------------------------------- the Hub unreachable


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_hub_unreachable_goes_offline_with_a_notice():
    calls = []
    env: dict = {}
    notice = hub.configure_hub(env, probe=lambda: calls.append(1) or False)
    assert calls and env["HF_HUB_OFFLINE"] == "1"
    assert "Hugging Face Hub is unreachable" in notice and "cache" in notice

    def broken():
        raise RuntimeError("DNS on fire")

    env = {}
    assert "unreachable" in hub.configure_hub(env, probe=broken) and env["HF_HUB_OFFLINE"] == "1"
    env = {}
    assert hub.configure_hub(env, probe=lambda: True) is None and "HF_HUB_OFFLINE" not in env
    env = {"HF_HUB_OFFLINE": "1"}
    assert "Offline mode" in hub.configure_hub(env, probe=lambda: pytest.fail("probed"))


def test_hub_probe_follows_hf_endpoint():
    assert hub.hub_address({}) == ("huggingface.co", 443)
    assert hub.hub_address({"HF_ENDPOINT": "https://hf-mirror.com"}) == ("hf-mirror.com", 443)
    assert hub.hub_address({"HF_ENDPOINT": "http://127.0.0.1:8080/"}) == ("127.0.0.1", 8080)
    for bad in ("", "not a url", "http://host:notaport", "://"):
        assert hub.hub_address({"HF_ENDPOINT": bad}) == ("huggingface.co", 443), bad
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}"}
    assert "unreachable" in hub.configure_hub(env)  # the real TCP probe, against a closed port
    assert env["HF_HUB_OFFLINE"] == "1"
    assert inspect.signature(hub.hub_reachable).parameters["timeout"].default <= 5  # a bounded probe
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        env = {"HF_ENDPOINT": f"http://127.0.0.1:{server.getsockname()[1]}"}
        assert hub.configure_hub(env) is None and "HF_HUB_OFFLINE" not in env


def test_offline_hub_folder_without_a_hub(tmp_path):
    env = {"AXON_OFFLINE_HUB": str(tmp_path)}
    assert "holds no offline hub" in hub.configure_hub(env, probe=lambda: pytest.fail("probed"))
    assert env["HF_HUB_OFFLINE"] == "1" and env["HF_HUB_CACHE"] == str(tmp_path.resolve())


# ---------------------------------------------------------------- loading: sizes and failed downloads


@pytest.fixture
def no_download(monkeypatch):
    """A fresh PairCache whose loaders fail the test if anything is downloaded."""
    monkeypatch.setattr(PairCache, "_load_sae", lambda self, choice: pytest.fail("SAE download started"))
    monkeypatch.setattr(PairCache, "_load_model", lambda self, *a: pytest.fail("model download started"))
    return PairCache(device="cpu")


def _first_choice(model: str):
    rel = load_catalogue().releases(model)[0]
    return rel.release, rel.saes[0].sae_id


@pytest.mark.parametrize("model, gib, free", [("gemma-2-2b", "9.7", 6), ("meta-llama/Llama-3.3-70B-Instruct", "260.8", 6),
                                              ("gemma-2-27b", "101.4", 20)])  # 27b: its first SAE alone is 4.6 GiB
def test_models_too_big_for_memory_are_refused_before_download(no_download, monkeypatch, model, gib, free):
    monkeypatch.setattr(loading, "_available_memory_bytes", lambda: free * 2**30)
    release, sae_id = _first_choice(model)
    with pytest.raises(LoadError, match=rf"needs about {gib} GiB .* only {free}\.0 GiB is free") as err:
        no_download.get(release, sae_id)
    assert model in str(err.value)


def test_sae_and_model_sizes_checked_before_download(no_download, monkeypatch):
    monkeypatch.setattr(loading, "_available_memory_bytes", lambda: 100 * 2**20)
    with pytest.raises(LoadError, match=r"SAE gpt2-small-res-jb / blocks.8.hook_resid_pre needs about 0\.1 GiB"):
        no_download.get(DEFAULT_RELEASE, DEFAULT_SAE_ID)
    monkeypatch.setattr(loading, "_available_memory_bytes", lambda: 600 * 2**20)  # the SAE fits, GPT-2 not
    with pytest.raises(LoadError, match=r"model gpt2-small needs about 0\.5 GiB"):
        no_download.get(DEFAULT_RELEASE, DEFAULT_SAE_ID)


def test_loaded_pairs_are_not_refused_when_memory_is_low(pairs, pair, monkeypatch):
    monkeypatch.setattr(loading, "_available_memory_bytes", lambda: 2**20)
    assert pairs.get(DEFAULT_RELEASE, DEFAULT_SAE_ID).sae is pair.sae


def test_container_memory_limit_is_the_budget(tmp_path):
    (tmp_path / "memory.max").write_text("4294967296\n")
    (tmp_path / "memory.current").write_text(str(3 * 2**30))
    (tmp_path / "memory.stat").write_text("anon 123\ninactive_file 536870912\nactive_file 9\n")
    assert loading._cgroup_free_bytes(tmp_path) == 2**30 + 2**29
    (tmp_path / "memory.max").write_text("max\n")
    assert loading._cgroup_free_bytes(tmp_path) is None
    assert loading._cgroup_free_bytes(tmp_path / "missing") is None


def _faults():
    import httpx

    return [
        (httpx.RemoteProtocolError("peer closed connection without sending complete message body "
                                   "(received 1048576 bytes, expected 98566232)"), "the download was interrupted"),
        (OSError("Consistency check failed: file should be of size 98566232 but has size 1048576 "
                 "(sae_weights.safetensors).\nThis is usually due to network issues"), "the download was interrupted"),
        (httpx.ConnectError("[Errno 111] Connection refused"), "the Hugging Face Hub is unreachable"),
        (httpx.ReadTimeout("The read operation timed out"), "the Hugging Face Hub is unreachable"),
        (OSError(errno.EROFS, "Read-only file system"), "cannot write to"),
        (PermissionError(errno.EACCES, "Permission denied", "/hub/.locks/x.lock"), "cannot write to"),
        (OSError(errno.ENOSPC, "No space left on device"), "the disk is full"),
    ]


def test_failed_downloads_become_messages_and_are_not_cached(monkeypatch):
    import sae_lens

    cache = PairCache(device="cpu")
    for err, words in _faults():
        def fail(*args, _err=err, **kwargs):
            raise _err

        monkeypatch.setattr(sae_lens.SAE, "from_pretrained", fail)
        with pytest.raises(LoadError) as got:
            cache.get(DEFAULT_RELEASE, "blocks.5.hook_resid_pre")
        message = str(got.value)
        assert message.startswith("Could not download SAE gpt2-small-res-jb / blocks.5.hook_resid_pre: ")
        assert words in message and "\n" not in message, message
        assert all(unicodedata.category(c)[0] != "C" for c in message)
        assert ("gpt2-small-res-jb", "blocks.5.hook_resid_pre") not in cache._saes


def test_stop_cancels_every_event_that_generates(app_module):
    """The Stop button's click handlers cancel every event that streams a run
    (Generate, Enter in the prompt, Steer, and a link's autorun): an event left
    out of a ``cancels=[...]`` list would keep running after Stop."""
    demo = app_module.demo
    fns = list(demo.fns.values())
    stop_ids = {b._id for b in demo.blocks.values() if isinstance(b, app_module.gr.Button) and b.value == "Stop"}
    assert len(stop_ids) == 1
    stop_fns = [f for f in fns if any(t[0] in stop_ids for t in f.targets) and f.cancels]
    cancelled = {i for f in stop_fns for i in f.cancels}
    generating = {f._id for f in fns if f.concurrency_id == "generate"}
    names = {f._id: getattr(f.fn, "__name__", f.name) for f in fns}
    assert len(generating) >= 4, sorted(names[i] for i in generating)  # run, submit, steer, autorun
    assert generating <= cancelled, sorted(names[i] for i in generating - cancelled)
