"""Moving through a run already shown: the token slider, a click on a token, the edge picker.

Each returns a :class:`TokenView` (or None: nothing to change), the outputs for
the graph shown at one token: graph, text, table, timeline, slider.

Worked example::

    v = scrub_to(run, 3)          # the graph as it was at token 3 (also during a run)
    v.scrub.value                 # 3
    highlight_token(run, 3)       # a second click on token 3: back to the newest token
    redraw(run, "decoder")        # the graph's JSON with decoder-cosine edges
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from ..figure import to_json
from ..session import VIEW_EDGE_KINDS
from .run import Scrub, scrub_range
from .status import table_frame

if TYPE_CHECKING:
    from ..session import RunSession


@dataclass
class TokenView:
    figure: str
    text: str
    table: pd.DataFrame
    timeline: str
    scrub: Scrub | None  # None: leave the slider as it is


def at_token(run: "RunSession", position: int | None) -> TokenView:
    """Outputs for the graph shown at ``position`` (None: the newest token)."""
    run.scrub(position)
    return TokenView(run.figure_json(relayout=False), run.text_html(), table_frame(run),
                     to_json(run.timeline()).decode(), scrub_range(run))


def scrub_to(run: "RunSession | None", position) -> TokenView | None:
    """The token slider: the graph as it was at that token (during a run too)."""
    if run is None or not run.steps:
        return None
    try:
        position = int(position)
    except (TypeError, ValueError):
        return None
    return at_token(run, position)


def highlight_token(run: "RunSession | None", position) -> TokenView | None:
    """A click on a token (in the text or the timeline) shows the graph at that
    token: its features lit and named; a second click goes back to the newest token."""
    try:
        position = int(position)
    except (TypeError, ValueError):
        return None
    if run is None or not run.steps:
        return None
    return at_token(run, None if run.at == position else position)


def redraw(run: "RunSession | None", kind) -> str | None:
    """The graph with another kind of edges (None: not a kind the picker offers, or no run)."""
    if run is None or kind not in VIEW_EDGE_KINDS:
        return None
    run.edge_kind = kind
    return run.figure_json(relayout=False)
