"""A workaround for Gradio 6.31's per-session state, which keeps every past output value.

Gradio keeps, per browser session (``Blocks.state_holder.session_data``),
a table of the page's blocks and each one's latest config and value
(``SessionState.blocks_config.blocks`` and ``.config_values``). An output
that gets a prop update (``gr.skip()``, ``gr.update(...)``) is replaced in
that table by a new component with a new id, and a later plain value for
it is stored under that new id as a new entry, never removed. A run's
frames skip the run JSON, the timeline, the comparison (and the table
between redraws) until its end, so each run left its run JSON (~0.2 MB for
4 tokens) behind for the session's life: ~30 MB per 100 runs (found with
tracemalloc and a reference chain ``demo.state_holder.session_data[hash]
.config_values[<new id>]["props"]["value"]``).

:func:`drop_stale_entries` is called when a session's run ends
(``ui/handlers.py``); tests/test_gradio_state.py shows the growth on the
installed Gradio and that the workaround removes it, so a Gradio that keeps
sessions another way shows up there first.

Worked example::

    drop_stale_entries(demo, request.session_hash)   # 8: entries of the run's skipped outputs
    drop_stale_entries(demo, "no such session")      # 0
"""

from __future__ import annotations

_GONE = object()


def drop_stale_entries(blocks, session_hash: str | None) -> int:
    """Free what Gradio keeps of a session's past outputs; returns how many entries.

    Removes, for one session, the entries of ids that are neither one of the
    page's blocks nor a session's current replacement of one (a frame in flight
    may still use that). Does nothing (0) for an unknown session, before
    launch, or where Gradio keeps sessions another way.
    """
    if not session_hash:
        return 0
    try:
        state = blocks.state_holder.session_data.get(session_hash)
        own = blocks.blocks  # the page's blocks: id -> block
        if state is None:
            return 0
        table = state.blocks_config.blocks
        values = state.config_values
    except AttributeError:  # not launched, or another Gradio
        return 0
    current = {getattr(block, "_id", None) for key, block in list(table.items()) if key in own}
    removed = 0
    for mapping in (table, values):
        for key in [k for k in list(mapping) if k not in own and k not in current]:
            if mapping.pop(key, _GONE) is not _GONE:
                removed += 1
    return removed
