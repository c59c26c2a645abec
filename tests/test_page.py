"""The page's handlers without Gradio (axon_core/page): plain values in, plain values out.

No server starts and nothing here imports Gradio or app.py: a
:class:`Services` is built from the offline hub's (model, SAE) cache, a label
service that never goes online, and an engine of its own.
"""

from __future__ import annotations

import dataclasses
import html
import functools
import json
import re
import tempfile
from urllib.parse import parse_qs, urlsplit

import pytest

from axon_core.deltas import PlayerState, scene_drawn
from axon_core.catalogue import DEFAULT_RELEASE, DEFAULT_SAE_ID, load_catalogue
from axon_core.engine import Engine
from axon_core.generation import GenerationSettings, generate
from axon_core.labels import LabelService
from axon_core.page import causal, downloads, fork, inspector, links, picker, view
from axon_core.page.request import layer_pairs, request_from_inputs
from axon_core.page.run import Frame, Notice, compute_steps, run_frames
from axon_core.page.services import Services
from axon_core.page.sessions import SessionRuns
from axon_core.page.settings import PageSettings, env_number
from axon_core.page.status import TABLE_COLUMNS, status_line, table_frame

PROMPT = "The capital of France is"


def inputs(**over) -> list:
    """Generate's inputs in the page's order (prompt ... threshold, steer, edge kind, at, layers)."""
    values = {"prompt": PROMPT, "model": "gpt2-small", "release": DEFAULT_RELEASE, "sae_id": DEFAULT_SAE_ID,
              "temperature": 0.8, "top_k": 50, "top_p": 0.95, "repetition_penalty": 1.1, "max_tokens": 4,
              "seed": 3, "feature_k": 12, "threshold": 0.1, "steer": "", "edge_kind": "npmi", "at": None,
              "layers": None}
    values.update(over)
    return list(values.values())


@pytest.fixture(scope="module")
def services(pairs, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("page")
    labels = LabelService(base_url="http://127.0.0.1:9", datasets_url="http://127.0.0.1:9",
                          cache_path=tmp / "labels.sqlite", enabled=False)
    engine = Engine(max_run_seconds=120)
    yield Services(PageSettings(), load_catalogue(), pairs, labels, engine, hub_notice="offline <hub>")
    engine.close()
    labels.close()


def frames_of(services, **over) -> tuple[list[Notice], list[Frame]]:
    items = list(run_frames(services, *inputs(**over)))
    return [x for x in items if isinstance(x, Notice)], [x for x in items if isinstance(x, Frame)]


@pytest.fixture(scope="module")
def finished(services):
    """One plain run's last frame."""
    return frames_of(services)[1][-1]


@pytest.fixture(scope="module")
def layered(services):
    """A run of layers 2, 5 and 8 (one forward), finished."""
    return frames_of(services, layers=[2, 5], max_tokens=3)[1][-1].run


# ---- settings, request, picker


def test_settings_from_the_environment_are_clamped_never_raising():
    assert env_number("N", 16, 1, int, env={"N": " 4 "}) == 4
    assert [env_number("N", 16, 1, int, env={"N": v}) for v in ("abc", "0", "nan", "")] == [16] * 4
    s = PageSettings.from_env({"SPACES_ZERO_GPU": "true", "AXON_MAX_RUN_SECONDS": "30", "AXON_REPLAY_MB": "2"})
    assert (s.zero_gpu, s.concurrency, s.gpu_seconds, s.replay_bytes) == (True, 1, 30, 2 << 20)
    assert PageSettings.from_env({}).concurrency == 16 and s.limits.top_k == (0, 200)
    # the test-only pace: off unless set, a bad value keeps it off, a large one is capped
    assert [PageSettings.from_env(e).step_delay for e in ({}, {"AXON_STEP_DELAY": "-1"}, {"AXON_STEP_DELAY": "x"},
                                                         {"AXON_STEP_DELAY": "0.1"}, {"AXON_STEP_DELAY": "99"})] \
        == [0.0, 0.0, 0.0, 0.1, 5.0]


def test_inputs_become_a_clamped_request_with_notices(services):
    limits = services.settings.limits
    req, notices = request_from_inputs(limits, "Hi", "gpt2-small", DEFAULT_RELEASE, DEFAULT_SAE_ID, "9", "x",
                                       0.95, 1.1, 10**9, 0, 12, 0.1, "", [8, 2])
    assert (req.settings.temperature, req.settings.top_k, req.settings.max_new_tokens) == (2.0, 50, limits.max_new_tokens)
    assert req.layers == (2, 8) and len(notices) == 3
    assert any(n.startswith("temperature") for n in notices) and any(n.startswith("top_k") for n in notices)


def test_a_run_reads_at_most_max_layers_saes(services, pair):
    limits = dataclasses.replace(services.settings.limits, max_layers=3)
    three = dataclasses.replace(services, settings=dataclasses.replace(services.settings, limits=limits))
    notices: list[str] = []
    extra = layer_pairs(three, pair, [2, 5, 11, 8], notices)  # 8 is the primary's own layer
    assert [p.choice.sae_id for p in extra] == ["blocks.2.hook_resid_pre", "blocks.5.hook_resid_pre"]
    assert notices == ["layers: a run reads at most 3 SAEs; kept 2, 5, 8"]
    assert layer_pairs(services, pair, [8], notices) == [] and len(notices) == 1


def test_picker_choices_come_from_the_catalogue(services):
    cat = services.catalogue
    assert DEFAULT_RELEASE in picker.release_names(cat, "gpt2-small") and picker.release_names(cat, None) == []
    ids, value = picker.sae_ids_for(cat, DEFAULT_RELEASE)
    assert value == DEFAULT_SAE_ID and ids == cat.by_release[DEFAULT_RELEASE].sae_ids()
    assert picker.sae_ids_for(cat, "no such release") == ([], None)
    choices = picker.layer_choices(cat, DEFAULT_RELEASE, DEFAULT_SAE_ID)
    assert {2, 5, 8, 11} <= set(choices) and picker.kept_layers([2, 99, 5], choices) == [2, 5]
    line, warning = picker.load_choice(services, DEFAULT_RELEASE, "blocks.2.hook_resid_pre")
    assert warning is None and line.endswith(f"loaded {DEFAULT_RELEASE} / blocks.2.hook_resid_pre")
    line, warning = picker.load_choice(services, "no-such-release", "x")
    assert warning and "Unknown SAE" in warning and html.escape(warning) in line
    assert "no Neuronpedia id" in picker.prefetch_labels(services, "no-such-release", "x") or \
        "no-such-release" in picker.prefetch_labels(services, "no-such-release", "x")


# ---- a run, frame by frame


def test_a_run_streams_frames_and_ends_with_exactly_the_generated_run(services, pair):
    notices, frames = frames_of(services, max_tokens=6, temperature="9")
    assert [n.text for n in notices] == ["temperature 9 clamped to 2"]
    last = frames[-1]
    assert last.ending is not None and last.warning is None and 'data-state="done"' in last.status
    assert all(f.ending is None and 'data-state="running"' in f.status for f in frames[:-1])
    want = list(generate(pair, PROMPT, GenerationSettings(max_new_tokens=6, temperature=2.0, seed=3)))
    got = last.ending.run_json["tokens"]
    assert [t["token_id"] for t in got] == [s.token_id for s in want]
    assert [[f["index"] for f in t["features"]] for t in got] == [[f.index for f in s.features] for s in want]
    assert last.run.steps == want  # the session's state is the run itself
    assert list(last.table.columns) == TABLE_COLUMNS and len(last.table) > 0
    assert (last.scrub.minimum, last.scrub.maximum, last.scrub.value) == (want[0].position, want[-1].position,
                                                                          want[-1].position)
    assert f"{len(want)} tokens · {len(last.run.graph)} features" in last.status
    assert json.loads(last.ending.timeline)["data"] and last.ending.compare == ""


def test_a_link_at_a_token_shows_that_token_at_the_end(services):
    last = frames_of(services, at=2)[1][-1]
    assert last.run.at == 2 and last.scrub.value == 2


def test_a_steered_run_is_compared_with_the_plain_one(services, pair):
    last = frames_of(services, steer="3:40")[1][-1]
    assert last.run.meta["steer"] == ((3, 40.0),)
    assert "axon-compare" in last.ending.compare and "Steering" in last.ending.compare
    assert ("first divergence" in last.ending.compare) or ("identical texts" in last.ending.compare)


@pytest.mark.parametrize("over, says", [
    ({"release": "no-such-release", "sae_id": "x"}, "Unknown SAE"),
    ({"prompt": ""}, "The prompt is empty"),
    ({"steer": f"{10**9}:1"}, "is not in this SAE"),
])
def test_a_run_that_cannot_start_says_why_in_one_failed_frame(services, over, says):
    notices, frames = frames_of(services, **over)
    assert len(frames) == 1
    f = frames[0]
    assert says in f.warning and 'data-state="failed"' in f.status and html.escape(f.warning) in f.status
    assert f.text is f.figure is f.table is f.scrub is f.ending is None  # the page keeps what it shows


def test_the_zerogpu_path_computes_the_same_run_in_this_thread(services, finished):
    zero = dataclasses.replace(services, settings=dataclasses.replace(services.settings, zero_gpu=True))
    computed = services.engine.stats()["computed"]
    items = list(run_frames(zero, *inputs(), gpu_steps=functools.partial(compute_steps, zero)))
    last = items[-1]
    assert services.engine.stats()["computed"] == computed  # the engine was not asked
    assert [t["token_id"] for t in last.ending.run_json["tokens"]] == \
        [t["token_id"] for t in finished.ending.run_json["tokens"]]


def test_status_line_escapes_what_it_is_told(services, finished):
    idle = status_line(services)
    assert idle.startswith('<b data-state="idle" class="axon-state">') and "offline &lt;hub&gt;" in idle
    assert "<b>x</b>" not in status_line(services, finished.run, "<b>x</b>", "done")
    assert list(table_frame(None).columns) == TABLE_COLUMNS and table_frame(None).empty


# ---- after a run: inspector, view, causal check, downloads


def test_inspector_shows_one_feature_of_the_run(services, finished):
    run = finished.run
    hit = run.steps[-1].features[0]
    v = inspector.inspect(services, run, hit.index)
    fired = [s.position for s in run.steps if any(f.index == hit.index for f in s.features)]
    assert f"feature **#{hit.index}**" in v.head and "Feature" in v.head  # labels offline: the fallback
    assert v.history["position"].tolist() == fired
    assert v.steer_feature == hit.index and len(re.findall(r'class="[^"]*\blit\b', v.text)) == len(fired)
    assert inspector.inspect(services, run, "nope").head == inspector.INSPECT_HINT
    assert inspector.inspect(services, None, 1).history is None
    assert inspector.key_of_row(run, [hit.index, None, "label"]) == hit.index
    assert inspector.key_of_row(run, ["x", None]) is None and inspector.key_of_row(None, [1, None]) is None


def test_add_steer_without_a_feature_warns_and_keeps_the_box():
    assert inspector.add_steer(None, "", 2, "1:1") == ("1:1", "Pick a feature first (click a node or a table row).")
    assert inspector.add_steer(None, 7, 2.5, " ") == ("7:2.5", None)
    assert inspector.format_steer(((1234, 8.5), (88, -3.0))) == "1234:8.5, 88:-3"


def test_scrubbing_and_clicking_tokens_move_the_graph(services, finished):
    run = finished.run
    first = run.steps[0].position
    v = view.scrub_to(run, first + 1)
    assert run.at == first + 1 and v.scrub.value == first + 1 and list(v.table.columns) == TABLE_COLUMNS
    assert view.highlight_token(run, first + 1).scrub.value == run.steps[-1].position  # second click: newest
    assert run.at is None
    assert view.scrub_to(run, "x") is None and view.scrub_to(None, 1) is None and view.highlight_token(run, None) is None
    assert view.redraw(run, "no such kind") is None
    assert view.redraw(run, "decoder") is not None and run.edge_kind == "decoder"
    view.redraw(run, "npmi")


def test_causal_check_needs_a_finished_run_of_several_layers(services, finished):
    assert causal.causal_for_token(services, None).note.startswith("Generate first")
    one = causal.causal_for_token(services, finished.run)
    assert one.note.startswith("This run reads one layer") and one.figure is None and one.table.empty


def test_causal_check_measures_the_shown_token(services, layered):
    v = causal.causal_for_token(services, layered)
    position = layered.steps[-1].position
    assert v.note.startswith(f"Token {position} (") and "ablations" in v.note
    assert list(v.table.columns) == causal.CAUSAL_COLUMNS and len(v.table) > 0
    assert set(v.table["source"]) and layered.edge_kind == "causal"
    drawn = PlayerState.of(v.figure).drawn()  # the page's player, sent the measured edges
    assert drawn["nodes"] and drawn["edges"] == scene_drawn(layered.scene(relayout=False))["edges"]


def test_downloads_are_written_on_demand(services, finished, monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    assert downloads.prepare_download(services, None, "json") == (None, "Generate first: there is no run to download yet.")
    path, warning = downloads.prepare_download(services, finished.run, "json")
    assert warning is None and path.parent.parent == downloads.export_root() and path.suffix == ".json"
    assert path.name.startswith("axon-") and "-gpt2-small-" in path.name
    assert json.loads(path.read_text())["tokens"] == finished.ending.run_json["tokens"]
    page, _ = downloads.prepare_download(services, finished.run, "html")
    assert page.name == path.name[:-len(".json")] + ".html" and "<script" in page.read_text()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(blocker))
    assert downloads.prepare_download(services, finished.run, "html") == \
        (None, "Downloads are unavailable: the disk cannot be written.")


# ---- links


def test_base_url_prefers_the_proxys_forwarded_host():
    assert links.base_url(None, {"host": "localhost:7860"}) == "http://localhost:7860/"
    assert links.base_url(None, {"host": "x", "x-forwarded-host": "h.example", "x-forwarded-proto": "https"}) == \
        "https://h.example/"
    assert links.base_url("Alice/Axon_Demo", None) == "https://alice-axon-demo.hf.space/"


def test_a_share_link_reruns_these_inputs_at_the_shown_token(services):
    url = links.share_link(services, "http://h/", 3, *inputs(temperature=0.5)[:12], "3:4", [5])
    q = parse_qs(urlsplit(url).query)
    assert url.startswith("http://h/?") and q["prompt"] == [PROMPT] and q["temperature"] == ["0.5"]
    assert (q["autorun"], q["at"], q["steer"], q["layers"]) == (["1"], ["3"], ["3:4"], ["5"])


def test_a_link_fills_the_page_with_values_it_can_show(services):
    f = links.from_query(services, {"prompt": "Hi", "temperature": "9", "autorun": "1", "layers": "2,99",
                                    "sae_id": "nope", "embed": "1"}, "http://h/")
    assert (f.prompt, f.temperature, f.autorun, f.release, f.sae_id) == ("Hi", 2.0, True, DEFAULT_RELEASE,
                                                                         DEFAULT_SAE_ID)
    assert f.notices == ["temperature 9 clamped to 2", f"sae_id not in release {DEFAULT_RELEASE}, using {DEFAULT_SAE_ID}"]
    assert f.layers == [2] and f.layer_notice == f"release {DEFAULT_RELEASE} has no SAE like {DEFAULT_SAE_ID} at layers 99"
    assert f.embed_open.startswith('<a class="axon-open" href="http://h/?') and "embed=" not in f.embed_open
    bare = links.from_query(services, {}, "http://h/")
    assert bare.autorun is False and bare.notices == [] and bare.embed_open == "" and bare.prompt


def test_a_fork_streams_both_texts_side_by_side_and_a_link_carries_it(services, pair):
    run = frames_of(services, max_tokens=6, temperature=0)[1][-1].run
    n_prompt = 1 + sum(s.is_prompt for s in run.steps)
    q = n_prompt + 2
    before = next(s for s in run.steps if s.position == q - 1)
    tok = next(c.token_id for c in before.decision.candidates if not c.chosen)
    run.scrub(q)  # the strip at token q offers to fork there with each candidate not chosen
    assert f'class="axon-fork" data-pos="{q}" data-tok="{tok}"' in run.text_html()
    run.scrub(None)
    panels = list(fork.fork_frames(services, run, f"{q}:{tok}:12345"))
    last = panels[-1]
    assert last.startswith('<div class="axon-compare-fork">') and f"Fork</b> at position {q}" in last
    assert f"first divergence at position {q}" in last and "writing…" not in last
    cols = re.findall(r'<div class="axon-text">(.*?)</div></div>', last)
    assert len(cols) == 2 and cols[0].count('class="tok') == cols[1].count('class="tok') == len(run.steps)
    assert run.fork == (q, tok)
    url = links.share_link(services, "http://h/", None, *inputs(temperature=0, max_tokens=6)[:12], "", None,
                           fork=run.fork)
    assert parse_qs(urlsplit(url).query)["fork"] == [f"{q}:{tok}"]
    assert links.from_query(services, {"prompt": "Hi", "fork": f"{q}:{tok}"}, "http://h/").fork == (q, tok)
    # the same fork again is not computed again (the engine's replay cache)
    computed = services.engine.stats()["computed"]
    assert list(fork.fork_frames(services, run, f"{q}:{tok}:67890"))[-1] == last
    assert services.engine.stats()["computed"] == computed
    # what cannot be forked says why
    assert "replaces a generated token" in list(fork.fork_frames(services, run, "1:5"))[-1]
    assert "Generate first" in list(fork.fork_frames(services, None, "1:5"))[-1]
    assert list(fork.fork_frames(services, run, "junk")) == []


def test_one_generating_run_per_browser_session():
    runs = SessionRuns()
    first = runs.start("a")
    other = runs.start("b")
    second = runs.start("a")
    assert runs.superseded("a", first) and not runs.superseded("a", second) and not runs.superseded("b", other)
    runs.finish("a", first)
    assert len(runs) == 2
    runs.finish("a", second)
    runs.finish("b", other)
    assert len(runs) == 0 and not runs.superseded(None, runs.start(None))


def test_the_pages_notes_follow_the_tables_cadence_and_the_api_text_stays_whole(services, finished):
    """The notes (sparklines, decision strip: replaced whole) are sent to the page when the
    table is, and with every final frame; a label tail's redraws (text=False) leave the page's
    text and notes as they are. The API's text always carries both, whole."""
    from axon_core.page.run import frame

    run = finished.run
    whole = finished.text
    assert finished.notes and finished.tokens and whole == finished.tokens + "</div>" + finished.notes
    run.table_at = float("-inf")  # the table is due: so are the notes
    due = frame(services, run)
    assert due.table is not None and due.notes == run.notes_html() and due.tokens is not None
    run.table_at = float("inf")  # not due (a frame between two of the table's)
    between = frame(services, run)
    assert between.table is None and between.notes is None and between.tokens is not None
    assert between.text == between.tokens + "</div>" + run.notes_html()
    tail = frame(services, run, final=True, ending=False, text=False)
    assert tail.tokens is None and tail.notes is None and tail.ending is None
    assert tail.text == run.tokens_html(frozen=False) + "</div>" + run.notes_html()
    last = frame(services, run, final=True)
    assert last.tokens == run.tokens_html(frozen=False) and last.notes == run.notes_html() and last.ending is not None
