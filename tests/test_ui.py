"""The UI layer's adapter (ui/handlers.py): axon_core/page's plain values → Gradio outputs,
checked without a server (Gradio is imported, nothing is launched)."""

from __future__ import annotations

import pandas as pd
import pytest

import gradio as gr
from axon_core.page.run import Ending, Frame, Scrub
from ui.handlers import frame_outputs, scrub_update

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
