"""Forks in both exports and over the API (issue 23 items 3 and 5): the run JSON of a
forked run carries the fork (its point, the forced token, both texts and the fork's
own tokens with their features), and the replay page shows it, hostile text inert.

References share nothing with axon_core.fork: the forked tokens are TransformerLens's
own greedy argmax over the prefix plus the forced token (one full forward per
token), and their features ``sae.encode`` of a plain ``run_with_cache``."""

from __future__ import annotations

import dataclasses
import json
import re
import types
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
import torch

from axon_core.engine import Engine
from axon_core.export import fork_from_json, run_from_json
from axon_core.fork import Fork, fork_seed
from axon_core.replay import replay_data, replay_html
from replay_runs import XSS, live_run
from steps_factory import random_steps
from test_replay import embedded, parse
from reference import greedy_tokens

PROMPT = "The capital of France is"
FORCED = 13  # '.': any token may be forced


def _services(pairs, tmp_path):
    from axon_core.catalogue import load_catalogue
    from axon_core.labels import LabelService
    from axon_core.page.services import Services
    from axon_core.page.settings import PageSettings

    labels = LabelService(base_url="http://127.0.0.1:9", datasets_url="http://127.0.0.1:9",
                          cache_path=tmp_path / "labels.sqlite", enabled=False)
    return Services(PageSettings(), load_catalogue(), pairs, labels, Engine(max_run_seconds=120), hub_notice="offline")


def test_a_runs_json_carries_its_fork_through_generate_and_the_strip(pairs, pair, tmp_path):
    from axon_core.catalogue import DEFAULT_RELEASE, DEFAULT_SAE_ID
    from axon_core.page.fork import fork_frames
    from axon_core.page.run import Frame, run_frames

    services = _services(pairs, tmp_path)
    model, bos = pair.model, pair.model.tokenizer.bos_token_id
    n_prompt = model.to_tokens(PROMPT).shape[1]  # BOS first
    q, new = n_prompt + 2, 7
    args = [PROMPT, "gpt2-small", DEFAULT_RELEASE, DEFAULT_SAE_ID, 0.0, 0, 1.0, 1.0, new, 3, 12, 0.1, "",
            "npmi", None, None, None, f"{q}:{FORCED}"]  # /generate's inputs, its fork last
    try:
        frames = [x for x in run_frames(services, *args) if isinstance(x, Frame)]
        run, end = frames[-1].run, frames[-1].ending
        d = json.loads(json.dumps(end.run_json))
        f = d["fork"]
        assert n_prompt == 1 + sum(s.is_prompt for s in run.steps)
        assert (f["position"], f["token_id"], f["link_fork"]) == (q, FORCED, f"{q}:{FORCED}")
        assert f["seed"] == fork_seed(3, Fork(q, FORCED))
        # the fork's tokens: the forced one, then TransformerLens's greedy continuation of prefix + forced
        prefix = [bos] + [s.token_id for s in run.steps if s.position < q] + [FORCED]
        want = greedy_tokens(model, prefix, n_prompt + new - 1 - q)
        assert [t["token_id"] for t in f["tokens"]] == [FORCED] + want
        assert [t["position"] for t in f["tokens"]] == list(range(q, n_prompt + new))
        was = next(s for s in run.steps if s.position == q)
        assert f["replaced"] == {"token_id": was.token_id, "text": was.shown}
        assert f["original"] == "".join(s.shown for s in run.steps if s.position >= q)
        tok = model.tokenizer.decode
        assert f["continuation"] == tok([FORCED] + want) and f["text"] == tok([FORCED])
        # each fork token's features: sae.encode of the residual of a plain forward over the forked tokens
        with torch.inference_mode():
            _, cache = model.run_with_cache(torch.tensor([prefix + want]))
            acts = pair.sae.encode(cache[pair.hook_name][0])
        for t in f["tokens"]:
            top = acts[t["position"]].topk(3)
            assert [x["index"] for x in t["features"][:3]] == top.indices.tolist()
            assert t["features"][0]["activation"] == pytest.approx(float(top.values[0]), abs=1e-3)
            assert str(t["features"][0]["index"]) in d["labels"]  # the fork's features have labels too
        # it reads back; the run's own tokens are untouched by it
        fork, steps = fork_from_json(d)
        assert fork == Fork(q, FORCED) and [s.token_id for s in steps] == [FORCED] + want
        assert [s.token_id for s in run_from_json(d)[0]] == [s.token_id for s in run.steps]
        assert "axon-compare-fork" in end.compare  # /generate's comparison output shows both texts
        # a fork from the strip (another token, later) replaces it in the downloads' JSON
        q2 = q + 1
        panels = list(fork_frames(services, run, f"{q2}:{FORCED + 1}:99", interval=0))
        assert "axon-compare-fork" in panels[-1] and run.fork == (q2, FORCED + 1)
        f2 = run.export_json({})["fork"]
        assert (f2["position"], [t["token_id"] for t in f2["tokens"]][0]) == (q2, FORCED + 1)
        prefix2 = [bos] + [s.token_id for s in run.steps if s.position < q2] + [FORCED + 1]
        assert [t["token_id"] for t in f2["tokens"]][1:] == greedy_tokens(model, prefix2, n_prompt + new - 1 - q2)
        # a run never forked carries none
        args[-1] = ""
        plain = [x for x in run_frames(services, *args) if isinstance(x, Frame)][-1]
        assert "fork" not in plain.ending.run_json and fork_from_json(plain.ending.run_json) is None
    finally:
        services.engine.close()


def test_a_fork_that_cannot_be_made_leaves_the_run_json_alone(pairs, tmp_path):
    from axon_core.catalogue import DEFAULT_RELEASE, DEFAULT_SAE_ID
    from axon_core.page.run import Frame, run_frames

    services = _services(pairs, tmp_path)
    try:
        for spec in ("1:13", "nonsense", "999:13"):  # a prompt token, not a fork, past the run
            args = [PROMPT, "gpt2-small", DEFAULT_RELEASE, DEFAULT_SAE_ID, 0.0, 0, 1.0, 1.0, 3, 0, 12, 0.1, "",
                    "npmi", None, None, None, spec]
            last = [x for x in run_frames(services, *args) if isinstance(x, Frame)][-1]
            assert last.ending is not None and "fork" not in last.ending.run_json
    finally:
        services.engine.close()


def _forked_live(q: int = 20):
    """The replay tests' recorded run (hostile labels and text), shown with a fork at
    ``q`` whose tokens carry hostile text too."""
    run, _ = live_run(40)
    own = random_steps(40, n_features=500, k=12, seed=9)[q - run.steps[0].position:]
    own = [dataclasses.replace(s, position=q + i, is_prompt=False) for i, s in enumerate(own[:12])]
    own[0] = dataclasses.replace(own[0], text="<img src=x onerror=window.__xss=3>")
    own[2] = dataclasses.replace(own[2], text="</script><b>bold</b>")
    run.fork, run.fork_steps = (q, own[0].token_id), own
    return run, own, orjson.loads(orjson.dumps(run.export_json({"axon": "test"})))


def test_the_replay_page_shows_the_fork_and_its_text_stays_text():
    run, own, d = _forked_live()
    q = run.fork[0]
    assert d["fork"]["continuation"] == "".join(s.shown for s in own)
    data = replay_data(d)
    fork = data["fork"]
    assert (fork["p"], fork["t"]) == (q, own[0].shown)
    assert fork["fork"] == "".join(s.shown for s in own)
    assert fork["run"] == "".join(s.shown for s in run.steps if s.position >= q)
    assert fork["was"] == next(s.shown for s in run.steps if s.position == q)
    assert data["frames"][fork["k"]]["p"] == q
    assert parse_qs(urlsplit(fork["link"]).query)["fork"] == [f"{q}:{own[0].token_id}"]
    for small in (False, True):
        page = replay_html(d, small=small)
        p = parse(page)
        assert [a.get("id") for a, _ in p.scripts] == ["axon-replay", None, None]  # data, player, page
        assert not [t for t, _ in p.tags if t in ("img", "b")]  # hostile markup made no element
        assert len(re.findall(r"</script", page, re.I)) == 3
        assert ("div", {"id": "fork", "hidden": None}) in p.tags
        got = embedded(page)["fork"]
        assert got == fork  # intact as data, escaped in the page
        assert "<img src=x onerror=window.__xss=3>" in got["fork"] and XSS not in page


def test_runs_without_a_fork_and_old_files_replay_unchanged():
    run, d = live_run(40)
    assert "fork" not in d and "fork" not in replay_data(d)
    old = {**d, "schema": "axon-run/1"}
    assert "fork" not in replay_data(old)
    _, _, forked = _forked_live()
    forked = {**forked, "schema": "axon-run/1"}  # a reader of either version takes the optional key
    assert replay_data(forked)["fork"]["p"] == 20
    assert replay_data(d)["frames"] == replay_data({k: v for k, v in forked.items() if k != "fork"})["frames"]


@pytest.mark.parametrize("bad", [{"fork": None}, {"fork": "7:5"}])
def test_a_malformed_fork_key_is_no_fork(bad):
    _, d = live_run(10)
    assert fork_from_json({**d, **bad}) is None and "fork" not in replay_data({**d, **bad})


def test_services_namespace_is_enough_for_the_strips_fork(pairs, pair):
    """The strip's fork (fork_frames) sets the run's fork and its steps, which its JSON then carries."""
    from axon_core.generation import GenerationSettings, generate
    from axon_core.page.fork import fork_frames
    from axon_core.session import RunSession

    settings = GenerationSettings(max_new_tokens=5, temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0,
                                  seed=0, feature_k=8, activation_threshold=0.1, stop_at_eos=False)
    meta = {"release": "gpt2-small-res-jb", "sae_id": "blocks.8.hook_resid_pre", "neuronpedia_id": None,
            "prompt": PROMPT, "steer": ()}
    run = RunSession(meta, settings, None, frame_interval=0.0)
    for s in generate(pair, PROMPT, settings):
        run.add(s)
    engine = Engine(batch="never")
    try:
        services = types.SimpleNamespace(pairs=pairs, engine=engine, settings=types.SimpleNamespace(zero_gpu=False))
        q = run.steps[-3].position
        list(fork_frames(services, run, f"{q}:{FORCED}"))
        d = run.export_json({})
        assert d["fork"]["position"] == q and d["fork"]["tokens"][0]["token_id"] == FORCED
        assert [t["position"] for t in d["fork"]["tokens"]] == [s.position for s in run.steps if s.position >= q]
    finally:
        engine.close()
