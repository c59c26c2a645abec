"""Gradio's per-session block table grows by one entry per "skip, then a value"
of an output (each holding that value) until ui.gradio_state.drop_stale_entries removes them."""

from __future__ import annotations

import asyncio

import gradio as gr
from gradio.state_holder import StateHolder

from ui.gradio_state import drop_stale_entries


def _page():
    with gr.Blocks() as demo:
        btn = gr.Button()
        out, html = gr.JSON(), gr.HTML()
        btn.click(lambda: None, None, [out, html])
    holder = StateHolder()
    holder.set_blocks(demo)  # what launch() does
    return demo, holder, list(demo.fns.values())[0], out


def _frames(demo, fn, state, runs):
    """Each run: a frame that skips both outputs, then one with their values (as AXON's runs end)."""
    for i in range(runs):
        asyncio.run(demo.postprocess_data(fn, [gr.skip(), gr.skip()], state))
        asyncio.run(demo.postprocess_data(fn, [{"run": i, "rows": list(range(100))}, f"<b>{i}</b>"], state))


def sizes(state):
    return len(state.blocks_config.blocks), len(state.config_values)


def test_stale_entries_are_dropped_and_the_latest_values_kept():
    demo, holder, fn, out = _page()
    state = holder["s1"]
    start = sizes(state)
    _frames(demo, fn, state, 5)
    assert sizes(state)[1] > start[1] + 5  # the growth this works around (Gradio 6.31)
    assert drop_stale_entries(demo, "s1") > 0
    after = sizes(state)
    assert after[0] <= start[0] + 2 and after[1] <= start[1] + 2  # at most each output's current replacement
    latest = [c["props"].get("value") for c in state.config_values.values() if c and c.get("type") == "json"]
    assert any(getattr(v, "root", v) == {"run": 4, "rows": list(range(100))} for v in latest)
    _frames(demo, fn, state, 3)  # the session goes on as before
    drop_stale_entries(demo, "s1")
    assert sizes(state) == after
    assert state[out._id] is not None


def test_unknown_session_or_an_unlaunched_page_is_left_alone():
    demo, holder, fn, _ = _page()
    assert drop_stale_entries(demo, "nobody") == 0
    assert drop_stale_entries(demo, None) == 0
    with gr.Blocks() as bare:
        gr.Button()
    assert drop_stale_entries(bare, "s1") == 0  # no state_holder before launch
