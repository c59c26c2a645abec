"""Share links: parse_query never raises and stays within Limits; links round-trip."""

from __future__ import annotations

import math
import unicodedata
from urllib.parse import parse_qs

from hypothesis import HealthCheck, given, settings, strategies as st

from axon_core.generation import GenerationSettings
from axon_core.run_request import MAX_POSITION
from axon_core.share import (
    DEFAULT_REQUEST,
    Limits,
    RunRequest,
    base_url_for,
    build_link,
    build_query,
    parse_query,
)

LIMITS = Limits()
KEYS = [
    "prompt", "model", "release", "sae_id", "seed", "temperature", "top_k", "top_p",
    "repetition_penalty", "max_tokens", "feature_k", "threshold", "stop_at_eos",
    "autorun", "steer", "layers", "watch", "fork",
]
NUMBERISH = [
    "nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e309", "-1e309", "1e-400", "-0",
    "0", "1", "-1", "2.5", "0.0000001", "1_000", " 7 ", "0x10", "1e5", "٣", "9" * 5000,
    "123:4.5,88:-2", "1:nan,2:inf,,:,3:", "true", "yes", "off", "",
]

any_text = st.text(st.characters(exclude_categories=()), max_size=300)  # incl. Cc, Cs, Cn
numberish = st.one_of(
    st.sampled_from(NUMBERISH),
    st.floats().map(repr),
    st.floats().map(str),
    st.integers().map(str),
)
scalar = st.one_of(any_text, numberish)
value = st.one_of(
    scalar,
    st.lists(scalar, max_size=3),
    st.none(), st.integers(), st.floats(), st.booleans(), st.binary(max_size=40),
    st.lists(st.integers(), max_size=2),
)
query = st.dictionaries(st.one_of(st.sampled_from(KEYS), any_text), value, max_size=20)


def assert_within_limits(req: RunRequest, limits: Limits) -> None:
    s = req.settings
    for name, lo, hi in [
        ("max_new_tokens", 1, limits.max_new_tokens),
        ("top_k", *limits.top_k),
        ("seed", *limits.seed),
        ("feature_k", *limits.feature_k),
    ]:
        v = getattr(s, name)
        assert type(v) is int and lo <= v <= hi, (name, v)
    for name, (lo, hi) in [
        ("temperature", limits.temperature),
        ("repetition_penalty", limits.repetition_penalty),
        ("activation_threshold", limits.activation_threshold),
    ]:
        v = getattr(s, name)
        assert isinstance(v, float) and math.isfinite(v) and lo <= v <= hi, (name, v)
    assert isinstance(s.top_p, float) and 0 < s.top_p <= 1
    assert isinstance(s.stop_at_eos, bool) and isinstance(req.autorun, bool)
    assert isinstance(req.prompt, str) and len(req.prompt) <= limits.max_prompt_chars
    assert all(c in "\n\t" or unicodedata.category(c) not in ("Cc", "Cs") for c in req.prompt)
    for name in (req.model, req.release, req.sae_id):
        assert name is None or (
            isinstance(name, str) and 0 < len(name) <= limits.max_name_chars
            and not any(unicodedata.category(c)[0] == "C" for c in name)
        )
    assert len(req.steer) <= limits.max_steer
    assert len({i for i, _ in req.steer}) == len(req.steer)
    for i, c in req.steer:
        assert type(i) is int and i >= 0
        assert isinstance(c, float) and -100 <= c <= 100
    assert isinstance(req.layers, tuple) and len(req.layers) <= limits.max_layers
    assert list(req.layers) == sorted(set(req.layers))
    assert all(type(i) is int and limits.layer[0] <= i <= limits.layer[1] for i in req.layers)
    assert isinstance(req.watch, tuple) and len(req.watch) <= limits.max_watch
    assert len(set(req.watch)) == len(req.watch)
    for layer, i in req.watch:
        assert layer is None or (type(layer) is int and limits.layer[0] <= layer <= limits.layer[1])
        assert type(i) is int and limits.steer_index[0] <= i <= limits.steer_index[1]
    assert req.fork is None or (len(req.fork) == 2 and all(type(x) is int and x >= 0 for x in req.fork)
                                and req.fork[0] <= MAX_POSITION and req.fork[1] <= limits.fork_token[1])


def assert_notices_ok(notices: list[str]) -> None:
    assert isinstance(notices, list)
    for n in notices:
        assert isinstance(n, str) and 0 < len(n) <= 160, n
        assert not any(unicodedata.category(c) in ("Cc", "Cs") for c in n), repr(n)


# ------------------------------------------------------------------ fuzz


@settings(max_examples=250, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(query)
def test_parse_query_never_raises_and_stays_in_limits(params):
    req, notices = parse_query(params, LIMITS)
    assert_within_limits(req, LIMITS)
    assert_notices_ok(notices)
    # whatever came out is a valid request, so its link reproduces it exactly
    assert parse_query(parse_qs(build_query(req)), LIMITS) == (req, [])


@settings(max_examples=100, deadline=None, database=None)
@given(st.dictionaries(st.sampled_from(KEYS), numberish, max_size=15),
       st.integers(1, 50), st.integers(1, 500))
def test_small_limits_are_respected(params, max_prompt, max_tokens):
    limits = Limits(max_prompt_chars=max_prompt, max_new_tokens=max_tokens)
    req, notices = parse_query(params, limits)  # default max_new_tokens 40 may exceed limit
    assert_within_limits(req, limits)
    assert_notices_ok(notices)


def test_garbage_containers_and_mappings():
    for params in [None, [], "prompt=x", {1: 2, None: "x"}, {"prompt": [[1]], "seed": {"a": 1}},
                   {"seed": 10**5000, "temperature": float("nan"), "top_k": b"\xff\xfe"}]:
        req, notices = parse_query(params, LIMITS)  # type: ignore[arg-type]
        assert_within_limits(req, LIMITS)
        assert_notices_ok(notices)


def test_huge_values_are_not_echoed_and_controls_are_stripped():
    params = {"temperature": "Z" * 100_000, "top_k": "\x1b[31m\x00evil\u202e" + "Q" * 50,
              "prompt": "y" * 100_000, "model": "m" * 100_000}
    req, notices = parse_query(params, LIMITS)
    assert_notices_ok(notices)
    joined = "\n".join(notices)
    assert 0 < joined.count("Z") <= 40
    assert 0 < joined.count("Q") <= 40
    assert "\x1b" not in joined and "\x00" not in joined and "\u202e" not in joined
    assert req.settings.temperature == DEFAULT_REQUEST.settings.temperature
    assert req.prompt == "y" * 2000
    assert req.model == "m" * LIMITS.max_name_chars


# ------------------------------------------------------------------ round trip

clean_char = st.characters(exclude_categories=("Cc", "Cs")) | st.sampled_from("\n\t +&=%#?;:,")
name_text = st.text(st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn")) | st.just(" "),
                    min_size=1, max_size=LIMITS.max_name_chars)
names = st.none() | name_text.map(str.strip).filter(bool)


def fl(lo, hi, **kw):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, **kw)


valid_settings = st.builds(
    GenerationSettings,
    max_new_tokens=st.integers(1, LIMITS.max_new_tokens),
    temperature=fl(*LIMITS.temperature),
    top_k=st.integers(*LIMITS.top_k),
    top_p=fl(0.0, 1.0, exclude_min=True),
    repetition_penalty=fl(*LIMITS.repetition_penalty),
    seed=st.integers(*LIMITS.seed),
    feature_k=st.integers(*LIMITS.feature_k),
    activation_threshold=fl(*LIMITS.activation_threshold),
    stop_at_eos=st.booleans(),
)
valid_steer = st.lists(
    st.tuples(st.integers(0, 2**31 - 1), fl(-100.0, 100.0)),
    max_size=8, unique_by=lambda e: e[0],
).map(tuple)
valid_requests = st.builds(
    RunRequest,
    prompt=st.text(clean_char, max_size=300),
    model=names, release=names, sae_id=names,
    settings=valid_settings, autorun=st.booleans(), steer=valid_steer,
)


@settings(max_examples=150, deadline=None, database=None)
@given(valid_requests)
def test_round_trip(req):
    query = build_query(req)
    assert query.startswith("prompt=") and "&seed=" in query
    back, notices = parse_query(parse_qs(query), LIMITS)
    assert notices == []
    assert back == req


@settings(max_examples=60, deadline=None, database=None)
@given(valid_requests, valid_requests)
def test_round_trip_with_custom_defaults(req, defaults):
    query = build_query(req, defaults)
    back, notices = parse_query(parse_qs(query, keep_blank_values=True), LIMITS, defaults)
    assert notices == []
    assert back == req


def test_query_only_has_what_differs():
    req = DEFAULT_REQUEST
    assert build_query(req) == "prompt=&seed=0"
    req = RunRequest("a b+c", "gpt2-small", None, None,
                     GenerationSettings(temperature=1.0, top_k=7), autorun=True)
    assert build_query(req) == "prompt=a+b%2Bc&model=gpt2-small&seed=0&temperature=1&top_k=7&autorun=1"
    assert build_link("https://x.hf.space/", req).startswith("https://x.hf.space/?prompt=a+b")
    assert build_link("https://x/?__theme=dark", req).startswith("https://x/?__theme=dark&prompt=")


# ------------------------------------------------------------------ specific cases


def test_clamping_messages():
    req, notices = parse_query(
        {"temperature": "9", "top_k": "-5", "max_tokens": "100000", "seed": "-1e309",
         "top_p": "0", "repetition_penalty": "inf", "feature_k": "3.6", "threshold": "1e9"},
        LIMITS,
    )
    s = req.settings
    assert (s.temperature, s.top_k, s.max_new_tokens, s.seed) == (2.0, 0, 200, 0)
    assert s.top_p == 0.01 and s.repetition_penalty == 2.0 and s.feature_k == 4
    assert s.activation_threshold == 100.0
    assert "temperature 9 clamped to 2" in notices
    assert "top_k -5 clamped to 0" in notices
    assert "max_tokens 100000 clamped to 200" in notices
    assert "seed -1e309 clamped to 0" in notices
    assert "top_p 0 clamped to 0.01" in notices
    assert "repetition_penalty inf clamped to 2" in notices
    assert "feature_k 3.6 rounded to 4" in notices
    assert "threshold 1e9 clamped to 100" in notices
    assert len(notices) == 8


def test_nan_and_non_numbers_are_ignored():
    d = DEFAULT_REQUEST.settings
    req, notices = parse_query({"temperature": "nan", "top_p": ["0.5", "NaN"], "seed": "abc"}, LIMITS)
    assert req.settings == d
    assert notices == [
        "seed 'abc' is not a number, kept 0",
        "temperature 'nan' is not a number, kept 0.8",
        "top_p 'NaN' is not a number, kept 0.95",
    ]


def test_in_range_values_are_taken_silently():
    req, notices = parse_query(
        {"temperature": "0", "top_k": "1000", "top_p": "1", "seed": "2147483647", "max_tokens": "1",
         "stop_at_eos": "no", "model": " gpt2-small ", "release": "", "sae_id": "blocks.8.hook_resid_pre"},
        LIMITS,
    )
    assert notices == []
    s = req.settings
    assert (s.temperature, s.top_k, s.top_p, s.seed, s.max_new_tokens) == (0.0, 1000, 1.0, 2**31 - 1, 1)
    assert s.stop_at_eos is False
    assert (req.model, req.release, req.sae_id) == ("gpt2-small", None, "blocks.8.hook_resid_pre")


def test_autorun_parsing():
    for raw in ["1", "true", "YES", " yes ", ["0", "1"]]:
        req, notices = parse_query({"autorun": raw}, LIMITS)
        assert req.autorun is True and notices == []
        assert req.settings == DEFAULT_REQUEST.settings
    for raw in ["0", "false", "no"]:
        req, notices = parse_query({"autorun": raw}, LIMITS)
        assert req.autorun is False and notices == []
    req, notices = parse_query({"autorun": "please"}, LIMITS)
    assert req.autorun is False and notices == ["autorun 'please' not understood, not running"]
    assert parse_query({}, LIMITS)[0].autorun is False


def test_prompt_truncation_and_control_chars():
    limits = Limits(max_prompt_chars=10)
    req, notices = parse_query({"prompt": "a\x00b\x07c\r\nd\te\x1bfghijklmnop"}, limits)
    assert req.prompt == "abc\nd\tefgh"
    assert notices == ["prompt: removed 3 control characters", "prompt truncated to 10 characters"]
    req, notices = parse_query({"prompt": "héllo \ud800wörld"}, LIMITS)
    assert req.prompt == "héllo wörld" and len(notices) == 1


def test_steer_parsing():
    req, notices = parse_query({"steer": "123:4.5,88:-2"}, LIMITS)
    assert req.steer == ((123, 4.5), (88, -2.0)) and notices == []

    req, notices = parse_query({"steer": "1:2,x:3,4,5:nan,-6:1,1:9,7:1e9,,8 : 0.5"}, LIMITS)
    assert req.steer == ((1, 2.0), (7, 100.0), (8, 0.5))
    assert notices[0] == "steer: skipped bad entry 'x:3' (+4 more)"
    assert any(n.startswith("steer: coefficient 7:1e9") for n in notices)

    many = ",".join(f"{i}:1" for i in range(20))
    req, notices = parse_query({"steer": many}, LIMITS)
    assert req.steer == tuple((i, 1.0) for i in range(8))
    assert notices == ["steer: kept the first 8 entries, dropped 12"]

    defaults = RunRequest("", None, None, None, GenerationSettings(), False, ((3, 1.0),))
    assert parse_query({"steer": ""}, LIMITS, defaults)[0].steer == ()
    assert parse_query({}, LIMITS, defaults)[0].steer == ((3, 1.0),)


def test_limits_from_env(monkeypatch):
    assert Limits.from_env({}) == Limits()
    lim = Limits.from_env({"AXON_MAX_PROMPT_CHARS": "50", "AXON_MAX_NEW_TOKENS": "12"})
    assert (lim.max_prompt_chars, lim.max_new_tokens) == (50, 12)
    assert Limits.from_env({"AXON_MAX_PROMPT_CHARS": "-3", "AXON_MAX_NEW_TOKENS": "lots"}) == Limits()
    monkeypatch.setenv("AXON_MAX_NEW_TOKENS", "5")
    req, notices = parse_query({"max_tokens": "30"})  # limits=None reads the environment
    assert req.settings.max_new_tokens == 5 and notices == ["max_tokens 30 clamped to 5"]
    req, notices = parse_query({})  # the default (40) is pulled into range silently
    assert req.settings.max_new_tokens == 5 and notices == []


def test_base_url_for():
    assert base_url_for("Alice/Axon_Demo.v2", None) == "https://alice-axon-demo-v2.hf.space/"
    assert base_url_for("Alice/Axon_Demo", "localhost:7860") == "https://alice-axon-demo.hf.space/"
    assert base_url_for(None, "example.com") == "https://example.com/"
    assert base_url_for(None, "localhost:7860", scheme="http") == "http://localhost:7860/"
    assert base_url_for(None, "[::1]:8080", scheme="HTTP") == "http://[::1]:8080/"
    assert base_url_for("", "example.com", scheme="javascript") == "https://example.com/"
    for bad_host in [None, "", "evil.com/path", "a b", "x@evil.com", "host:99999", "http://x"]:
        assert base_url_for(None, bad_host) == "http://127.0.0.1:7860/"
    assert base_url_for("no-slash", None) == "http://127.0.0.1:7860/"


# ------------------------------------------------------------------ layers (issue 12: several SAEs at once)

valid_layers = st.lists(st.integers(*LIMITS.layer), max_size=LIMITS.max_layers, unique=True).map(
    lambda xs: tuple(sorted(xs)))


@settings(max_examples=80, deadline=None, database=None)
@given(valid_requests, valid_layers, valid_layers)
def test_layers_round_trip(req, layers, default_layers):
    req = RunRequest(**{**req.__dict__, "layers": layers})
    back, notices = parse_query(parse_qs(build_query(req)), LIMITS)
    assert notices == [] and back == req
    defaults = RunRequest(**{**DEFAULT_REQUEST.__dict__, "layers": default_layers})
    back, notices = parse_query(parse_qs(build_query(req, defaults), keep_blank_values=True), LIMITS, defaults)
    assert notices == [] and back == req


def test_layers_parsing():
    req, notices = parse_query({"prompt": "Hi", "layers": "2,5,8,11"}, LIMITS)
    assert req.layers == (2, 5, 8, 11) and notices == []
    assert "layers=2%2C5%2C8%2C11" in build_query(req)
    req, notices = parse_query({"layers": " 11, 2,2,x,-1,500,5 "}, LIMITS)
    assert req.layers == (2, 5, 11)
    assert notices == ["layers: skipped 'x' (+2 more)"]
    req, notices = parse_query({"layers": "1,2,3,4,5,6"}, LIMITS)
    assert req.layers == (1, 2, 3, 4) and notices == ["layers: kept the first 4, dropped 2"]
    defaults = RunRequest(**{**DEFAULT_REQUEST.__dict__, "layers": (2, 8)})
    assert parse_query({"layers": ""}, LIMITS, defaults)[0].layers == ()
    assert parse_query({}, LIMITS, defaults)[0].layers == (2, 8)
    assert parse_query({}, LIMITS)[0].layers == () and "layers" not in build_query(DEFAULT_REQUEST)


# ------------------------------------------------------------------ watch (issue 22 item 2: followed features)

valid_watch = st.lists(st.tuples(st.one_of(st.none(), st.integers(*LIMITS.layer)), st.integers(0, 2**31 - 1)),
                       max_size=LIMITS.max_watch, unique=True).map(tuple)


@settings(max_examples=80, deadline=None, database=None)
@given(valid_requests, valid_layers, valid_watch, valid_watch)
def test_watch_round_trip(req, layers, watch, default_watch):
    req = RunRequest(**{**req.__dict__, "layers": layers, "watch": watch})
    back, notices = parse_query(parse_qs(build_query(req)), LIMITS)
    assert notices == [] and back == req
    defaults = RunRequest(**{**DEFAULT_REQUEST.__dict__, "watch": default_watch})
    back, notices = parse_query(parse_qs(build_query(req, defaults), keep_blank_values=True), LIMITS, defaults)
    assert notices == [] and back == req


# ------------------------------------------------------------------ forks (issue 23 item 3: what if another token)

valid_forks = st.none() | st.tuples(st.integers(0, MAX_POSITION), st.integers(*LIMITS.fork_token))


@settings(max_examples=80, deadline=None, database=None)
@given(valid_requests, valid_forks, valid_forks)
def test_fork_round_trip(req, fork, default_fork):
    req = RunRequest(**{**req.__dict__, "fork": fork})
    back, notices = parse_query(parse_qs(build_query(req)), LIMITS)
    assert notices == [] and back == req
    defaults = RunRequest(**{**DEFAULT_REQUEST.__dict__, "fork": default_fork})
    back, notices = parse_query(parse_qs(build_query(req, defaults), keep_blank_values=True), LIMITS, defaults)
    assert notices == [] and back == req


def test_watch_parsing():
    req, notices = parse_query({"prompt": "Hi", "watch": "7124, 8:88"}, LIMITS)
    assert req.watch == ((None, 7124), (8, 88)) and notices == []
    assert "watch=7124%2C8%3A88" in build_query(req)
    req, notices = parse_query({"watch": " 5,5, x, 8:5, 999:1, -3, 8:5 "}, LIMITS)
    assert req.watch == ((None, 5), (8, 5))
    assert notices == ["watch: skipped 'x' (+2 more)"]
    req, notices = parse_query({"watch": ",".join(str(i) for i in range(20))}, LIMITS)
    assert len(req.watch) == 16 and notices == ["watch: kept the first 16 features, dropped 4"]
    defaults = RunRequest(**{**DEFAULT_REQUEST.__dict__, "watch": ((None, 3),)})
    assert parse_query({"watch": ""}, LIMITS, defaults)[0].watch == ()
    assert parse_query({}, LIMITS, defaults)[0].watch == ((None, 3),)
    assert "watch" not in build_query(DEFAULT_REQUEST)


def test_fork_parsing():
    req, notices = parse_query({"prompt": "Hi", "fork": " 7 : 6342 "}, LIMITS)
    assert req.fork == (7, 6342) and notices == []
    assert "fork=7%3A6342" in build_query(req)
    assert "fork" not in build_query(DEFAULT_REQUEST)
    for bad in ("7", "x:1", "7:-1", "7:1:2", "-3:5", f"7:{2**31}", f"{MAX_POSITION + 1}:5"):
        req, notices = parse_query({"fork": bad}, LIMITS)
        assert req.fork is None and len(notices) == 1 and notices[0].startswith("fork "), (bad, notices)
    defaults = RunRequest(**{**DEFAULT_REQUEST.__dict__, "fork": (3, 4)})
    assert parse_query({"fork": ""}, LIMITS, defaults)[0].fork is None
    assert parse_query({}, LIMITS, defaults)[0].fork == (3, 4)
