"""The watch list (issue 22 item 2): a pinned feature's exact activation at every token, fired or not.

References are independent of the product: a plain TransformerLens ``run_with_cache``
of the run's tokens and SAELens's ``sae.encode`` of its hook activations.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from axon_core.engine import Engine
from axon_core.generation import Generation, GenerationSettings, generate
from axon_core.watch import MAX_WATCH, Watch, format_watch, resolve_watch

PROMPT = "The capital of France is"
SETTINGS = GenerationSettings(max_new_tokens=10, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0,
                              seed=3, feature_k=8, activation_threshold=0.1, stop_at_eos=False)


def _encoded(pair, steps, prepend_bos: bool, hooks_saes):
    """{hook: sae.encode(cache[hook][0])} of a plain run_with_cache of the run's tokens."""
    model = pair.model
    bos = [model.tokenizer.bos_token_id] if prepend_bos else []
    tokens = torch.tensor(bos + [s.token_id for s in steps])
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens[None])
        return {hook: sae.encode(cache[hook][0]) for hook, sae in hooks_saes}


def _pick(encoded: torch.Tensor, steps, n_never: int, n_fired: int) -> list[int]:
    """Features that are never among any step's reported features (some of them active
    below the threshold or the top-k, where there are such), then some that are."""
    shown = {f.index for s in steps for f in s.features}
    active = (encoded > 0).any(0)
    never_shown = [i for i in range(encoded.shape[1]) if i not in shown]
    weak = [i for i in never_shown if active[i]]  # fired, but never passed top-k / threshold
    silent = [i for i in never_shown if not active[i]]
    fired = sorted(shown)[:n_fired]
    return (weak[: n_never // 2] + silent[: n_never - min(len(weak), n_never // 2)])[:n_never] + fired


def _check(steps, encoded: torch.Tensor, slots: list[int], indices: list[int]):
    for step in steps:
        want = encoded[step.position, indices]
        got = torch.tensor([step.watched[j] for j in slots])
        assert torch.allclose(got, want, atol=1e-4, rtol=0), step.position


def test_gpt2_watched_equal_sae_encode_at_every_position(pair):
    plain = list(generate(pair, PROMPT, SETTINGS))
    enc = _encoded(pair, plain, True, [(pair.hook_name, pair.sae)])[pair.hook_name]
    indices = _pick(enc, plain, n_never=10, n_fired=6)
    keys, notes = resolve_watch([(None, i) for i in indices], [pair])
    assert notes == [] and len(keys) == 16
    steps = list(generate(pair, PROMPT, SETTINGS, watch=keys))
    # watching changes nothing else: the same tokens and features as the plain run
    assert [(s.token_id, s.features) for s in steps] == [(s.token_id, s.features) for s in plain]
    assert all(len(s.watched) == 16 for s in steps) and all(s.watched == () for s in plain)
    _check(steps, enc, list(range(16)), indices)
    shown = {f.index for s in steps for f in s.features}
    never = [i for i in indices if i not in shown]
    assert len(never) >= 10
    # some never-shown feature was active below the threshold / top-k: a real value, not a 0
    assert any(s.watched[indices.index(i)] > 0 for s in steps for i in never)


@pytest.mark.parametrize("batch", ["never", "always"])
def test_engine_watch_is_part_of_the_request_and_batches(pair, batch):
    engine = Engine(batch=batch, replay_bytes=8 << 20)
    try:
        a, b = ((None, 5), (None, 7)), ((None, 7),)
        runs = [engine.submit(pair, PROMPT, SETTINGS, watch=a), engine.submit(pair, PROMPT, SETTINGS, watch=a),
                engine.submit(pair, PROMPT, SETTINGS, watch=b), engine.submit(pair, "Another prompt", SETTINGS)]
        assert runs[1] is runs[0] and runs[2] is not runs[0]
        for r in runs:
            while not r.finished:
                r.wait(len(r.steps), 0.1)
        assert engine.stats()["computed"] == 3
        alone = list(generate(pair, PROMPT, SETTINGS, watch=a))
        assert torch.allclose(torch.tensor([s.watched for s in runs[0].steps]),
                              torch.tensor([s.watched for s in alone]), atol=1e-5)
        assert [s.watched[0] for s in runs[2].steps] == pytest.approx([s.watched[1] for s in runs[0].steps], abs=1e-5)
        assert all(s.watched == () for s in runs[3].steps)
        for r in runs[1:]:
            engine.release(r)
        engine.release(runs[0])
        again = engine.submit(pair, PROMPT, SETTINGS, watch=a)  # finished: replayed, not recomputed
        assert again is runs[0] and engine.stats()["computed"] == 3
        engine.release(again)
    finally:
        engine.close()


def test_several_layers_watched_equal_sae_encode(pairs, offline_hub):
    from tests.test_depth import _write_missing_saes

    _write_missing_saes(offline_hub)
    p = {la: pairs.get("gpt2-small-res-jb", f"blocks.{la}.hook_resid_pre") for la in (2, 5, 8)}
    primary, extra = p[8], [p[2], p[5]]
    plain = list(generate(primary, PROMPT, SETTINGS, extra=extra))
    enc = _encoded(primary, plain, True, [(x.hook_name, x.sae) for x in p.values()])
    want = [(8, 1), (2, 3), (5, 30), (8, 40), (2, 100), (5, 5)]
    keys, notes = resolve_watch([(None, 1), (2, 3), (5, 30), (8, 40), (2, 100), (5, 5), (11, 4), (2, 10**7)],
                                [primary, *extra])
    assert keys == tuple(want)  # unqualified: the primary's layer; layer 11 and a too-large index left out
    assert notes == ["watch: 11:4 (+1 more) is not a feature of this run's SAEs, not watched"]
    steps = list(generate(primary, PROMPT, SETTINGS, extra=extra, watch=keys))
    for layer in (2, 5, 8):
        slots = [j for j, (la, _) in enumerate(keys) if la == layer]
        _check(steps, enc[p[layer].hook_name], slots, [keys[j][1] for j in slots])


def test_watch_keys_outside_the_run_are_refused(pair):
    with pytest.raises(ValueError):
        Generation(pair, PROMPT, SETTINGS, watch=[(8, 3)])  # not canonical for a run of one SAE
    keys, notes = resolve_watch([(8, 3), (None, 3), (8, 4)] + [(None, i) for i in range(100, 120)], [pair])
    assert keys[:2] == ((None, 3), (None, 4)) and len(keys) == MAX_WATCH
    assert notes == [f"watch: kept the first {MAX_WATCH} features, dropped 6"]
    assert format_watch(((None, 7124), (8, 88))) == "7124,8:88"


def test_an_sae_encoded_whole_where_not_columnwise(pair):
    """A hook on the pre-activations (as a TopK or other architecture would be): encoded in
    full, the columns picked; still sae.encode's values."""
    sae = pair.sae
    x = torch.randn(5, sae.cfg.d_in) * 3
    handle = sae.hook_sae_acts_pre.register_forward_hook(lambda m, i, o: o * 0.5)
    try:
        w = Watch([pair], [(None, 1), (None, 9)])
        assert not w._parts[0][2].exact
        with torch.inference_mode():
            assert torch.allclose(torch.tensor(w.rows([x])), sae.encode(x)[:, [1, 9]], atol=1e-5)
    finally:
        handle.remove()
    w = Watch([pair], [(None, 1), (None, 9)])
    assert w._parts[0][2].exact
    with torch.inference_mode():
        assert torch.allclose(torch.tensor(w.rows([x])), sae.encode(x)[:, [1, 9]], atol=1e-5)


def test_watched_nodes_stay_in_the_scene_however_weak():
    """The scene keeps the strongest ``max_nodes`` nodes; a watched one is kept whatever its peak."""
    from axon_core.session import RunSession
    from steps_factory import random_steps

    steps = random_steps(40, n_features=200, k=8, seed=2)
    peaks: dict[int, float] = {}
    for s in steps:
        for f in s.features:
            peaks[f.index] = max(peaks.get(f.index, 0.0), f.activation)
    latest = {f.index for f in steps[-1].features}
    weak = sorted((i for i in peaks if i not in latest), key=peaks.get)[:2]
    scenes = {}
    for watch in ((), tuple((None, i) for i in weak)):
        run = RunSession({"neuronpedia_id": None}, SETTINGS, None, frame_interval=0, max_nodes=20, watch=watch)
        for s in steps:
            run.add(s)
        scenes[watch] = {int(i) for i in run.scene().ids}
    plain, watched = scenes.values()
    assert len(peaks) > 20 and not set(weak) & plain  # too weak for the scene ...
    assert set(weak) <= watched and len(watched) == 20  # ... unless watched


@pytest.fixture(scope="module")
def pythia_pair(pythia_hub):
    from axon_core.loading import PairCache

    return PairCache(device="cpu").get("pythia-70m-deduped-res-sm", "blocks.2.hook_resid_post")


def test_pythia_watched_equal_sae_encode(pythia_pair):
    pair = pythia_pair
    assert pair.sae.cfg.apply_b_dec_to_input and pair.sae.b_dec.abs().max() > 0  # b_dec is subtracted
    plain = list(generate(pair, PROMPT, SETTINGS))
    enc = _encoded(pair, plain, False, [(pair.hook_name, pair.sae)])[pair.hook_name]
    indices = _pick(enc, plain, n_never=8, n_fired=4)
    keys, _ = resolve_watch([(None, i) for i in indices], [pair])
    steps = list(generate(pair, PROMPT, SETTINGS, watch=keys))
    _check(steps, enc, list(range(len(indices))), indices)


def test_gemma_jumprelu_watched_equal_sae_encode_below_thresholds(gemma3_pair):
    pair = gemma3_pair  # the session's one real-size load (tests/conftest.py)
    sae = pair.sae
    assert type(sae).__name__ == "JumpReLUSAE"
    settings = dataclasses.replace(SETTINGS, max_new_tokens=4)
    plain = list(generate(pair, PROMPT, settings))
    enc = _encoded(pair, plain, True, [(pair.hook_name, sae)])[pair.hook_name]
    tokens = torch.tensor([pair.model.tokenizer.bos_token_id] + [s.token_id for s in plain])
    with torch.inference_mode():
        _, cache = pair.model.run_with_cache(tokens[None])
        pre = cache[pair.hook_name][0] @ sae.W_enc + sae.b_enc
    # features whose pre-activation is positive but under their own threshold somewhere: watched as 0 there
    below = ((pre > 0) & (pre < sae.threshold)).any(0).nonzero()[:, 0].tolist()[:8]
    fired = sorted({f.index for s in plain for f in s.features})[:4]
    indices = below + fired
    keys, _ = resolve_watch([(None, i) for i in indices], [pair])
    steps = list(generate(pair, PROMPT, settings, watch=keys))
    _check(steps, enc, list(range(len(indices))), indices)


# ---- the page: the watch box → the run → sparklines, hover, run JSON, link ------------------------------


def test_page_run_watches_draws_sparklines_and_links_it(pairs, tmp_path):
    import html
    import re
    from urllib.parse import parse_qs, urlsplit

    from axon_core.catalogue import DEFAULT_RELEASE, DEFAULT_SAE_ID, load_catalogue
    from axon_core.export import run_from_json
    from axon_core.labels import LabelService
    from axon_core.page import inspector, links, watchlist
    from axon_core.page.run import Frame, Notice, run_frames
    from axon_core.page.services import Services
    from axon_core.page.settings import PageSettings

    labels = LabelService(base_url="http://127.0.0.1:9", datasets_url="http://127.0.0.1:9",
                          cache_path=tmp_path / "labels.sqlite", enabled=False)
    engine = Engine(max_run_seconds=120)
    services = Services(PageSettings(), load_catalogue(), pairs, labels, engine, hub_notice="offline")
    try:
        box, _ = watchlist.pin("", 8, 7, 8)
        box, _ = watchlist.pin(box, None, 300, 8)
        box, note = watchlist.pin(box, 8, 7, 8)
        assert box == "7, 300" and note == "L8 #7 is watched already."
        args = ["Paris is", "gpt2-small", DEFAULT_RELEASE, DEFAULT_SAE_ID, 0.8, 50, 0.95, 1.1, 5, 3, 12, 0.1, "",
                "npmi", None, None, box + ", 9:1, x"]
        items = list(run_frames(services, *args))
        notices = [x.text for x in items if isinstance(x, Notice)]
        frames = [x for x in items if isinstance(x, Frame)]
        assert any("watch: skipped 'x'" in n for n in notices)
        run = frames[-1].run
        assert run.watched_keys == (7, 300)
        d = frames[-1].ending.run_json
        assert d["meta"]["watch"] == "7,300"
        steps, _, _ = run_from_json(json.loads(json.dumps(d)))
        assert [s.watched for s in steps] == [s.watched for s in run.steps] and all(len(s.watched) == 2 for s in steps)
        # the reference: sae.encode of a plain run_with_cache of the run's tokens
        pair = pairs.get(DEFAULT_RELEASE, DEFAULT_SAE_ID)
        enc = _encoded(pair, run.steps, True, [(pair.hook_name, pair.sae)])[pair.hook_name]
        _check(run.steps, enc, [0, 1], [7, 300])
        # sparklines under the text, one per watched feature, as many points as tokens, the newest marked
        page = frames[-1].text
        sparks = re.findall(r'<div class="axon-spark" data-key="(\d+)" data-tokens="(\d+)" data-at="(\d+)"', page)
        n = len(run.steps)
        assert sparks == [("7", str(n), str(n - 1)), ("300", str(n), str(n - 1))]
        first = re.findall(r'class="axon-spark" data-key="7" data-tokens="(\d+)"', frames[0].text)
        assert len(frames) == 1 or int(first[0]) < n  # it grows as the run streams
        run.scrub(run.steps[1].position)  # the slider: the scrubbed token is marked
        assert f'data-key="7" data-tokens="{n}" data-at="1"' in run.text_html()
        # each token's hover lists the watched features, by name, with their value at that token
        titles = {int(pos): html.unescape(t) for pos, t in re.findall(r'data-pos="(\d+)" title="([^"]*)"',
                                                                      run.tokens_html())}
        assert sorted(titles) == [s.position for s in run.steps]
        for pos, title in titles.items():
            listed = re.findall(r"Feature (\d+) \((-?[\d.]+)\)", title.split(" · watched: ")[1])
            assert [int(k) for k, _ in listed] == [7, 300], title
            assert [float(v) for _, v in listed] == pytest.approx(enc[pos, [7, 300]].tolist(), abs=0.006)
        # pinning from the table and the graph (the Watch button's pick), at most MAX_WATCH
        row = frames[-1].table.iloc[0].tolist()  # [feature, layer, label, ...]
        picked = watchlist.pick_of_key(run, inspector.key_of_row(run, row))
        assert picked == (8, int(row[0]))
        box2, note = watchlist.pin(box, *picked, run.primary_layer)
        assert box2 == f"7, 300, {row[0]}" and note is None
        node = run.steps[-1].features[-1].key  # a graph node of the run
        assert watchlist.pick_of_key(run, node) == (8, run.steps[-1].features[-1].index)
        assert watchlist.pick_of_key(run, "not a key") is None and watchlist.pick_of_key(None, node) is None
        assert watchlist.pick_of_found([5, 42, "found", "no", 0, 0, "cached"]) == (5, 42)
        assert watchlist.pin(box, 5, 42, run.primary_layer)[0] == "7, 300, 5:42"  # another layer: qualified
        full = ", ".join(str(i) for i in range(MAX_WATCH))
        assert watchlist.pin(full, 8, 999, 8) == (full, f"At most {MAX_WATCH} features can be watched: remove one first.")
        url = links.share_link(services, "http://h/", None, *args[:12], "", [], box)
        assert parse_qs(urlsplit(url).query)["watch"] == ["7,300"]
        fill = links.from_query(services, parse_qs(urlsplit(url).query), "http://h/")
        assert fill.watch == "7,300"
    finally:
        engine.close()
        labels.close()
