"""The UI layer's adapter (ui/handlers.py): axon_core/page's plain values → Gradio outputs,
checked without a server (Gradio is imported, nothing is launched)."""

from __future__ import annotations

import pandas as pd
import pytest

import gradio as gr
from axon_core.page.run import Ending, Frame, Scrub
from ui.handlers import UNKNOWN, frame_outputs, scrub_update

SKIP = gr.skip()


def test_a_failed_frame_keeps_what_the_page_shows_and_warns_escaped():
    with pytest.warns(UserWarning, match="&lt;b&gt;no&lt;/b&gt;"):  # gr.Warning outside an event: a warning
        out = frame_outputs(Frame(None, "<b>status</b>", warning="<b>no</b>"))
    assert out == [SKIP, SKIP, SKIP, "<b>status</b>", None] + [SKIP] * 6


def test_a_running_frame_updates_text_graph_and_status_only():
    out = frame_outputs(Frame("run", "s", text="<div>t</div>", figure="{}"))
    assert out == ["<div>t</div>", "{}", SKIP, "s", "run"] + [SKIP] * 6
    assert len(out) == 11  # app.py's outputs: text, graph, table, status, state, run JSON, 2 buttons, timeline, compare, slider


def test_the_last_frame_offers_the_downloads_and_moves_the_slider():
    table = pd.DataFrame({"feature": [1]})
    out = frame_outputs(Frame("run", "s", "t", "{}", table, Scrub(1, 7, 4), Ending({"schema": "axon-run/1"}, "{}", "")))
    assert out[2] is table and out[5] == {"schema": "axon-run/1"}
    assert out[6] == out[7] == gr.update(interactive=True)
    assert out[8:10] == ["{}", ""] and out[10] == gr.update(minimum=1, maximum=7, value=4)
    assert scrub_update(None) == SKIP


def test_a_run_resends_what_did_not_change_instead_of_skipping():
    """Skips cost Gradio a new component per output per frame; a run re-sends the last
    value (or what a new run starts from) and skips only what it knows nothing of."""
    shown = [UNKNOWN] * 6 + ["JSON label", "HTML label", "", "", UNKNOWN]
    shown[5] = None  # the run JSON: cleared by a new run
    table = pd.DataFrame({"feature": [1]})
    first = frame_outputs(Frame("run", "s", "<div>t</div>", "{}", table, Scrub(1, 2, 2)), shown)
    assert first[:5] == ["<div>t</div>", "{}", table, "s", "run"]
    assert first[5:10] == [None, "JSON label", "HTML label", "", ""]
    assert first[10] == gr.update(minimum=1, maximum=2, value=2)
    later = frame_outputs(Frame("run", "s2", "<div>tt</div>"), shown)  # no figure, table or slider this time
    assert later[0] == "<div>tt</div>" and later[1] == "{}" and later[2] is table and later[10] == 2
    assert not any(isinstance(v, dict) and v == SKIP for v in later)
    end = frame_outputs(Frame("run", "s3", "t", "{}", None, None, Ending({"schema": "axon-run/1"}, "{tl}", "")), shown)
    assert end[5] == {"schema": "axon-run/1"} and end[6] == end[7] == gr.update(interactive=True)
    assert shown[6] == "JSON label" and shown[8] == "{tl}"  # an update without a value keeps the label
    fresh = [UNKNOWN] * 11
    assert frame_outputs(Frame("run", "s", "t"), fresh)[1] == SKIP  # nothing known yet: skipped
