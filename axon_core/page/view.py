"""Moving through a run already shown: the token slider, a click on a token, the edge picker.

Each returns a :class:`TokenView` (or None: nothing to change), the outputs for
the graph shown at one token: graph, text, table, timeline, slider.

Worked example::

    v = scrub_to(run, 3)          # the graph as it was at token 3 (also during a run)
    v.scrub.value                 # 3
    highlight_token(run, 3)       # a second click on token 3: back to the newest token
    redraw(run, "decoder")        # the graph's JSON with decoder-cosine edges
    gradient_for_token(services, run)   # the text + decision strip, with the gradient flavour added
    measured_for_token(services, run)   # ... with the measured flavour (8 ablations) added
    measured_for_token(services, run, "7:262")   # ... against the candidate ' the' clicked at token 7
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from ..decision import gradient_pushes
from ..depth import run_tokens
from ..figure import to_json
from ..generation import forward_lock
from ..loading import LoadError
from ..measured import gradient_pushes_fast, measured_effects
from ..residuals import FastWeights
from ..session import VIEW_EDGE_KINDS
from ..steering import steering_edit
from .fork import parse_fork_spec
from .run import Scrub, scrub_range
from .status import table_frame

log = logging.getLogger("axon")

if TYPE_CHECKING:
    from ..session import RunSession


@dataclass
class TokenView:
    figure: str
    text: str
    table: pd.DataFrame
    timeline: str | None  # None: not drawn (the timeline is closed)
    scrub: Scrub | None  # None: leave the slider as it is
    notes: str = ""  # under the text: sparklines and the decision strip


def timeline_json(run: "RunSession") -> str:
    """The timeline figure (tokens × strongest features) as JSON."""
    return to_json(run.timeline()).decode()


def at_token(run: "RunSession", position: int | None, timeline: bool = True) -> TokenView:
    """Outputs for the graph shown at ``position`` (None: the newest token);
    without ``timeline`` (its accordion closed) the timeline is not drawn (None)."""
    run.scrub(position)
    return TokenView(run.graph_log(relayout=False), run.tokens_html(), table_frame(run),
                     timeline_json(run) if timeline else None, scrub_range(run), run.notes_html())


def scrub_to(run: "RunSession | None", position, timeline: bool = True) -> TokenView | None:
    """The token slider: the graph as it was at that token (during a run too)."""
    if run is None or not run.steps:
        return None
    try:
        position = int(position)
    except (TypeError, ValueError):
        return None
    return at_token(run, position, timeline)


def highlight_token(run: "RunSession | None", position, timeline: bool = True) -> TokenView | None:
    """A click on a token (in the text or the timeline) shows the graph at that
    token: its features lit and named; a second click goes back to the newest token."""
    try:
        position = int(position)
    except (TypeError, ValueError):
        return None
    if run is None or not run.steps:
        return None
    return at_token(run, None if run.at == position else position, timeline)


def redraw(run: "RunSession | None", kind) -> str | None:
    """The graph with another kind of edges (None: not a kind the picker offers, or no run)."""
    if run is None or kind not in VIEW_EDGE_KINDS:
        return None
    run.edge_kind = kind
    return run.graph_log(relayout=False)


def compared(decision, shown_position: int, vs=None) -> int:
    """The candidate the strip compares the chosen token with: the one clicked
    (``vs``: the strip's "position:token_id", for the token shown at that
    position, a candidate not chosen), else the runner-up."""
    spec = parse_fork_spec(vs)
    if spec is not None and spec[0] == shown_position and spec[1] != decision.chosen \
            and decision.index_of(spec[1]) is not None:
        return spec[1]
    return decision.runner_up.token_id


def gradient_for_token(services, run: "RunSession | None", vs=None) -> str | None:
    """The decision strip's gradient flavour for the token shown (or the newest):
    each feature's activation × gradient of logit(chosen) − logit(other) at
    the position that chose it, through every later layer (one forward over the
    prefix and one backward, off the token loop); ``other``: the candidate
    clicked (``vs``, see :func:`compared`) or the runner-up. Returns the notes
    (with the strip) to show, or None: nothing to do."""
    found = _deciding(run)
    if found is None:
        return None
    steps, shown, before = found
    decision = before.decision
    other = compared(decision, shown.position, vs)
    try:
        pair = services.pairs.get(run.meta["release"], run.meta["sae_id"])
        feats = [f for f in before.features if f.layer in (None, run.primary_layer)]
        tokens = run_tokens(steps, getattr(pair.model.tokenizer, "bos_token_id", None))
        edit = steering_edit(pair.sae, run.meta["steer"]) if run.meta.get("steer") else None
        t = time.perf_counter()
        args = (pair.sae, pair.hook_name, tokens, before.position, [f.index for f in feats], decision.chosen,
                other, edit)
        if FastWeights.supports(pair.model):  # GPT-2: the fast stepper's prefix, one row's backward
            pushes = gradient_pushes_fast(pair.fast_weights, pair.model, *args)
        else:
            with forward_lock(pair.model, None):
                pushes = gradient_pushes(pair.model, *args)
        entry = {"other": other, "pushes": [(f.key, v) for f, v in zip(feats, pushes)],
                 "ms": 1e3 * (time.perf_counter() - t)}
    except (LoadError, ValueError, RuntimeError) as err:
        log.exception("gradient flavour failed")
        entry = {"other": other, "error": f"The gradient flavour failed ({type(err).__name__}): {str(err)[:200]}"}
    with run.lock:
        run.gradients.setdefault(before.position, {})[other] = entry
    return run.notes_html()


def _deciding(run: "RunSession | None"):
    """(the run's steps, the shown token's step, the step whose decision chose it), or None."""
    if run is None or not run.steps:
        return None
    steps = list(run.steps)
    at = run.at if run.at is not None else steps[-1].position
    i = next((k for k, s in enumerate(steps) if s.position == at), len(steps) - 1)
    shown, before = steps[i], steps[i - 1] if i else None
    decision = before.decision if before is not None else None
    if decision is None or decision.chosen != shown.token_id or decision.runner_up is None:
        return None
    return steps, shown, before


def measured_for_token(services, run: "RunSession | None", vs=None) -> str | None:
    """The decision strip's measured flavour for the token shown (or the newest):
    each of the deciding position's 8 strongest features (the run's first SAE)
    ablated in turn there, that position re-run from the hook point up, and the
    change in logit(chosen) − logit(other) and in p(chosen); ``other``: the
    candidate clicked (``vs``, see :func:`compared`) or the runner-up. Returns
    the notes (with the strip) to show, or None: nothing to do."""
    found = _deciding(run)
    if found is None:
        return None
    steps, shown, before = found
    decision = before.decision
    other = compared(decision, shown.position, vs)
    try:
        pair = services.pairs.get(run.meta["release"], run.meta["sae_id"])
        tokens = run_tokens(steps, getattr(pair.model.tokenizer, "bos_token_id", None))
        edit = steering_edit(pair.sae, run.meta["steer"]) if run.meta.get("steer") else None
        fast = pair.fast_weights if FastWeights.supports(pair.model) else None
        t = time.perf_counter()
        with forward_lock(pair.model, None) if fast is None else contextlib.nullcontext():
            m = measured_effects(pair.model, pair.sae, pair.hook_name, tokens, before.position, decision.chosen,
                                 other, threshold=run.settings.activation_threshold,
                                 weights=fast, edit=edit)
        entry = {"other": other, "logit_diff": m.logit_diff, "prob": m.prob,
                 "rows": [(run.key(f, run.primary_layer), dd, dp) for f, dd, dp in
                          zip(m.features, m.d_logit_diff, m.d_prob)],
                 "ms": 1e3 * (time.perf_counter() - t)}
    except (LoadError, ValueError, RuntimeError) as err:
        log.exception("measured flavour failed")
        entry = {"other": other, "error": f"The measured flavour failed ({type(err).__name__}): {str(err)[:200]}"}
    with run.lock:
        run.measured.setdefault(before.position, {})[other] = entry
    return run.notes_html()
