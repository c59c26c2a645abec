"""Evidence in the inspector: top examples, logit lens, density from Neuronpedia (in the background), AXON's own lens.

References: the logit lens is checked against TransformerLens's own final norm
and unembedding (``model.ln_final`` with its scale hooked to 1, then
``model.unembed``), and for GPT-2 as loaded against ``W_dec[f] @ W_U``; the
background fetch against the fake Neuronpedia's request counts and its
``hold`` mode, never a clock.
"""

from __future__ import annotations

import functools
import gzip
import html.parser
import json
from types import SimpleNamespace

import pytest
import torch

from axon_core.catalogue import load_catalogue
from axon_core.generation import GenerationSettings, generate
from axon_core.labels import LabelService, PrefetchError
from axon_core.labels.__main__ import main as labels_main
from axon_core.labels.evidence import BEFORE, MAX_EXAMPLES, Evidence, from_feature
from axon_core.logit_lens import logit_lens
from axon_core.page import inspector
from axon_core.page.evidence import evidence_view, picked
from axon_core.session import RunSession
from neuronpedia_fake import FakeNeuronpedia
import polling

NP = "gpt2-small/8-res-jb"
RELEASE, SAE_ID = "gpt2-small-res-jb", "blocks.8.hook_resid_pre"
PROMPT = "The capital of France is"
SETTINGS = GenerationSettings(max_new_tokens=4, seed=1, stop_at_eos=False)
HOSTILE = ["<script>alert(1)</script>", "<img src=x onerror=alert(2)>", '" onmouseover="alert(3)', "&amp;<b>",
           "\u202eevil", "a\nb", "</div></div><iframe src=//x>", "  "]
wait_for = functools.partial(polling.wait_for, timeout=10.0)


def feature_json(max_act=7.5, tokens=None):
    tokens = tokens or HOSTILE
    values = [float(i) for i in range(len(tokens))]
    return {"activations": [
        {"tokens": tokens, "values": values, "maxValue": max(values), "maxValueTokenIndex": len(tokens) - 1},
        {"tokens": [" weak", " one"], "values": [0.5, 0.0], "maxValue": 0.5, "maxValueTokenIndex": 0}],
        "pos_str": ["<b>bold</b>", " Paris"], "pos_values": [2.5, 1.5],
        "neg_str": ["<script>x</script>", " the"], "neg_values": [-3.0, -10000],
        "frac_nonzero": 0.0012, "maxActApprox": max_act}


@pytest.fixture
def fake():
    with FakeNeuronpedia() as f:
        yield f


@pytest.fixture
def svc(fake, tmp_path):
    s = LabelService(base_url=fake.url, datasets_url=fake.datasets_url, cache_path=tmp_path / "labels.sqlite",
                     rate_per_s=0)
    yield s
    s.close()


def services_for(svc, pair):
    return SimpleNamespace(labels=svc, catalogue=load_catalogue(), pairs=SimpleNamespace(get=lambda r, s: pair))


def run_of(pair, svc, labels=None):
    """A run whose features' labels are all local (``labels`` where given, else "no label"):
    every request the fake sees is then an evidence request."""
    meta = {"model": "gpt2-small", "release": RELEASE, "sae_id": SAE_ID, "neuronpedia_id": NP, "prompt": PROMPT}
    steps = list(generate(pair, PROMPT, SETTINGS))
    svc.put(NP, {f.index: (labels or {}).get(f.index) for s in steps for f in s.features})
    run = RunSession(meta, SETTINGS, svc, frame_interval=0.0)
    for step in steps:
        run.add(step)
    return run


class _Tags(html.parser.HTMLParser):
    """Every tag and attribute of an HTML fragment, as a browser's parser sees them."""

    def __init__(self):
        super().__init__()
        self.tags, self.attrs = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [name for name, _ in attrs]


def parsed(fragment: str) -> _Tags:
    p = _Tags()
    p.feed(fragment)
    return p


# ---- values ------------------------------------------------------------------


def test_evidence_from_the_feature_endpoint_and_back_from_the_store():
    long = [f" t{i}" for i in range(200)]
    row = feature_json(tokens=long)
    row["activations"][0]["maxValueTokenIndex"] = 100
    ev = from_feature(row)
    assert ev.missing == () and ev.max_act == 7.5 and ev.density == pytest.approx(0.0012)
    assert ev.pos == (("<b>bold</b>", 2.5), (" Paris", 1.5)) and ev.neg == (("<script>x</script>", -3.0),)  # N/A out
    top = ev.examples[0]
    assert top.tokens[top.max_index] == " t100" and top.max_index == BEFORE  # cut to a window around the max
    assert [e.max_value for e in ev.examples] == sorted((e.max_value for e in ev.examples), reverse=True)
    assert Evidence.from_parts(ev.parts()) == ev
    assert from_feature({"frac_nonzero": -1, "maxActApprox": 0}).density is None  # <= 0: unknown
    many = {"activations": [{"tokens": ["a"], "values": [i], "maxValue": i} for i in range(30)]}
    assert len(from_feature(many).examples) == MAX_EXAMPLES
    assert Evidence.from_parts({"lens": "not json"}).missing == ("lens", "examples")


# ---- the inspector ---------------------------------------------------------------


def test_inspector_evidence_arrives_in_the_background_and_renders_hostile_text_inert(pair, svc, fake):
    hit = next(generate(pair, PROMPT, SETTINGS)).features[0]
    run = run_of(pair, svc, {hit.index: HOSTILE[0]})
    assert hit.index in run.graph
    fake.labels[(NP, hit.index)] = HOSTILE[0]
    fake.feature_extra[(NP, hit.index)] = feature_json()
    services = services_for(svc, pair)
    fake.mode = "hold"
    v = inspector.inspect(services, run, hit.index)  # answers while Neuronpedia holds the request unanswered
    assert fake.wait_held(1)
    assert v.waiting and v.picked["index"] == hit.index
    assert "on its way" in v.evidence and "Logit lens · AXON" in v.evidence  # AXON's own lens at once
    assert svc.evidence.requests == 1
    for _ in range(3):  # asked again while in flight: no second request
        inspector.refresh_evidence(services, v.picked)
    fake.let_go()
    assert wait_for(lambda: not svc.evidence.pending(NP, hit.index) and svc.evidence.arrivals)
    shown, waiting = inspector.refresh_evidence(services, v.picked)
    assert not waiting and svc.evidence.requests == 1 and fake.count(fake.feature_path(NP, hit.index)) == 1
    # every hostile string shows as text: no tag or attribute of its own reaches the page
    tags = parsed(shown)
    assert set(tags.tags) <= {"div", "span"} and set(tags.attrs) <= {"class", "style", "title"}
    for s in HOSTILE[:4]:
        assert s not in shown
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in shown and "&lt;img src=x onerror=alert(2)&gt;" in shown
    assert shown.count("axon-ex-max") == 2  # each example's max token marked
    assert "fires on 0.12 % of tokens" in shown and "typical maximum 7.5" in shown
    assert "&lt;b&gt;bold&lt;/b&gt;" in shown  # Neuronpedia's lens, escaped
    assert "a↵b" in shown and "␣␣</span>" in shown  # a newline, and a token of spaces only, visible
    # it is on disk: a new service (a restart) shows it with no request
    other = LabelService(base_url=fake.url, cache_path=svc.cache_path, rate_per_s=0)
    try:
        ev = other.evidence.get(NP, hit.index)
        assert ev.missing == () and ev.max_act == 7.5 and other.evidence.requests == 0
    finally:
        other.close()
    # the head (a label) is escaped too
    head = inspector.inspect(services, run, hit.index).head
    assert "<script>" not in head and "&lt;script&gt;" in head


def test_a_429_pauses_evidence_and_a_404_is_remembered(pair, fake, tmp_path):
    now = [0.0]
    svc = LabelService(base_url=fake.url, datasets_url=fake.datasets_url, cache_path=tmp_path / "l.sqlite",
                       rate_per_s=0, clock=lambda: now[0])
    services = services_for(svc, pair)
    fake.mode = "ratelimit"  # a 429 with Neuronpedia's body and Retry-After: 30
    pick = picked(services, None, 3, 8, RELEASE, SAE_ID)
    html_, _ = evidence_view(services, pick)
    assert wait_for(lambda: svc.evidence.requests == 1 and not svc.evidence.pending(NP, 3))
    fake.mode = "normal"
    evidence_view(services, pick)  # paused (Retry-After 30 s): no request
    assert svc.evidence.requests == 1 and "Logit lens · AXON" in html_
    now[0] += 31  # the pause is over
    evidence_view(services, pick)  # feature 3 is unknown to the fake: a 404
    assert wait_for(lambda: svc.evidence.requests == 2 and not svc.evidence.pending(NP, 3))
    shown, waiting = evidence_view(services, pick)
    assert not waiting and "none published" in shown and svc.evidence.requests == 2
    svc.close()


# ---- AXON's logit lens -----------------------------------------------------------


def reference_lens(model, direction, k):
    """TransformerLens's final norm (its scale hooked to 1) and unembedding applied to the
    direction, minus the same for zero: the direct logit effect, ranked."""
    def one(t, hook):
        return torch.ones_like(t)

    with torch.no_grad(), model.hooks(fwd_hooks=[("ln_final.hook_scale", one)]):
        d = direction.to(model.W_U.dtype)[None, None]
        effect = (model.unembed(model.ln_final(d)) - model.unembed(model.ln_final(torch.zeros_like(d))))[0, 0]
    return effect, torch.topk(effect, k).indices.tolist(), torch.topk(-effect, k).indices.tolist()


def test_offline_logit_lens_equals_w_dec_times_w_u_ranked(pair, tmp_path):
    """GPT-2 as loaded (fold_ln, centred): exactly ``W_dec[f] @ W_U``; shown offline."""
    model, sae = pair.model, pair.sae
    svc = LabelService(base_url="http://127.0.0.1:9", datasets_url="http://127.0.0.1:9",
                       cache_path=tmp_path / "l.sqlite", enabled=False)
    try:
        services = services_for(svc, pair)
        for f in (0, 5, sae.W_dec.shape[0] - 1):
            lens = logit_lens(model, sae, pair.hook_name, f, k=8)
            raw = sae.W_dec[f].detach() @ model.W_U
            assert [t for t, _ in lens.pos] == torch.topk(raw, 8).indices.tolist()
            assert [t for t, _ in lens.neg] == torch.topk(-raw, 8).indices.tolist()
            assert [v for _, v in lens.pos] == pytest.approx(torch.topk(raw, 8).values.tolist(), abs=1e-4)
            _, up, down = reference_lens(model, sae.W_dec[f].detach(), 8)
            assert [t for t, _ in lens.pos] == up and [t for t, _ in lens.neg] == down
        shown, waiting = evidence_view(services, picked(services, None, 5, 8, RELEASE, SAE_ID))
        assert not waiting and "not local" in shown  # offline: Neuronpedia's part says so
        top = model.tokenizer.decode([logit_lens(model, sae, pair.hook_name, 5).pos[0][0]])
        assert html_escape(top) in shown
    finally:
        svc.close()


def html_escape(s):
    import html

    return html.escape(s.replace("\n", "↵").replace("\t", "⇥"), quote=True)


@pytest.mark.parametrize("family,processed", [("pythia", True), ("pythia", False), ("gemma2", False),
                                              ("gemma3", False), ("gemma3", True)])
def test_logit_lens_goes_through_the_final_norm_as_transformer_lens_does(family, processed):
    from test_families import small_model

    model = small_model(family, processed)
    sae = SimpleNamespace(W_dec=torch.randn(6, model.cfg.d_model, generator=torch.Generator().manual_seed(1)))
    for f in range(6):
        lens = logit_lens(model, sae, "blocks.2.hook_resid_pre", f, k=5)
        effect, up, down = reference_lens(model, sae.W_dec[f], 5)
        assert [t for t, _ in lens.pos] == up and [t for t, _ in lens.neg] == down
        assert [v for _, v in lens.pos] == pytest.approx(effect[up].tolist(), rel=1e-4, abs=1e-5)
    assert logit_lens(model, SimpleNamespace(W_dec=torch.randn(3, 16)), "blocks.1.attn.hook_z", 0) is None


# ---- bulk prefetch ---------------------------------------------------------------


def bulk_rows(n_batches=3, per=4):
    features, activations = [], []
    for b in range(n_batches):
        idx = range(b * per, (b + 1) * per)
        features.append([{"index": str(i), "pos_str": [f" up{i}"], "pos_values": [1.0], "neg_str": [],
                          "neg_values": [], "frac_nonzero": 0.01, "maxActApprox": 1.0 + i,
                          "embedding": [0.0] * 8} for i in idx])
        activations.append([{"index": i if i % 2 else str(i), "tokens": [" a", f" <x{i}>"], "values": [0.0, v],
                             "maxValue": v, "maxValueTokenIndex": 1} for i in idx for v in (1.0, 2.0)])
    return features, activations


def test_bulk_prefetch_of_evidence_is_resumable_with_progress(svc, fake):
    features, activations = bulk_rows()
    fake.set_bulk(NP, "features", features)
    fake.set_bulk(NP, "activations", activations)
    fake.fail_next(fake.batch_path(NP, 1, "activations"), times=1, status=500)
    seen = []
    with pytest.raises(PrefetchError):
        svc.evidence.prefetch(NP, lambda folder, done, total: seen.append((folder, done, total)))
    assert ("features", 3, 3) in seen and ("activations", 1, 3) in seen
    got = svc.evidence.prefetch(NP)  # resumes: batch 0 of each folder is not asked again
    assert got == {"features": 0, "activations": 8}
    assert fake.count(fake.batch_path(NP, 0, "activations")) == 1 and fake.count(fake.batch_path(NP, 0, "features")) == 1
    for i in range(12):
        ev = svc.evidence.get(NP, i)
        assert ev.missing == () and ev.max_act == 1.0 + i and ev.pos == ((f" up{i}", 1.0),)
        assert [e.max_value for e in ev.examples] == [2.0, 1.0] and ev.examples[0].tokens[1] == f" <x{i}>"
    assert svc.evidence.requests == 0  # all local: no feature-endpoint request


def test_the_prefetch_button_brings_evidence_with_progress_and_resumes(svc, fake):
    """The page's prefetch button (picker.prefetch_labels, evidence on): labels, then the
    evidence folders, progress per batch; a failed batch says how to resume, and the next
    press asks only for what is missing."""
    from axon_core.page import picker

    features, activations = bulk_rows()
    fake.set_batches(NP, [[(i, f"label {i}") for i in range(b, b + 4)] for b in range(0, 12, 4)])
    fake.set_bulk(NP, "features", features)
    fake.set_bulk(NP, "activations", activations)
    fake.fail_next(fake.batch_path(NP, 2, "activations"), times=1, status=500)
    services = SimpleNamespace(labels=svc, catalogue=load_catalogue(), pairs=SimpleNamespace(device="cpu"),
                               hub_notice=None, startup_error=None)
    seen = []
    line = picker.prefetch_labels(services, RELEASE, SAE_ID, lambda *a: seen.append(a), evidence=True)
    assert "12 labels cached" in line and "evidence prefetch stopped (run it again to resume)" in line
    assert (3, 3) in seen and (3, 3, "features") in seen and (2, 3, "activations") in seen
    line = html.unescape(picker.prefetch_labels(services, RELEASE, SAE_ID, evidence=True))
    assert "0 labels cached" in line and "with 0 logit lenses and 4 features' examples" in line  # only what was missing
    for folder in ("features", "activations"):
        assert [fake.count(fake.batch_path(NP, b, folder)) for b in range(3)] == [1, 1, 1 + (folder == "activations")]
    assert svc.known(NP, 11) == "label 11" and svc.evidence.local(NP, 11).max_act == 12.0
    assert svc.evidence.local(NP, 11).missing == ()


def test_the_command_line_prefetches_evidence(fake, tmp_path, monkeypatch, capsys):
    features, activations = bulk_rows(2)
    fake.set_batches(NP, [[(i, f"label {i}") for i in range(8)]])
    fake.set_bulk(NP, "features", features)
    fake.set_bulk(NP, "activations", activations)
    monkeypatch.setenv("AXON_NEURONPEDIA_URL", fake.url)
    monkeypatch.setenv("AXON_NEURONPEDIA_DATASETS_URL", fake.datasets_url)
    cache = tmp_path / "cli.sqlite"
    assert labels_main(["prefetch", NP, "--evidence", "--cache", str(cache)]) == 0
    err = capsys.readouterr().err
    assert "activations [" in err and "batch 2/2" in err and "8 logit-lens rows" in err
    with LabelService(cache_path=cache, enabled=False) as svc:
        assert svc.evidence.local(NP, 7).max_act == 8.0 and svc.known(NP, 7) == "label 7"


def test_the_bulk_record_format_is_the_exports(fake, tmp_path):
    """The fake's features/ and activations/ files are gzip'd JSON lines keyed on their own index."""
    features, _ = bulk_rows(1)
    fake.set_bulk(NP, "features", features)
    import httpx

    raw = httpx.get(fake.datasets_url + f"/v1/{NP}/features/batch-0.jsonl.gz").content
    rows = [json.loads(line) for line in gzip.decompress(raw).splitlines()]
    assert [r["index"] for r in rows] == ["0", "1", "2", "3"]
