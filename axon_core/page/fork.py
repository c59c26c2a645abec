"""A click on "fork" in the decision strip: the run forked at that token, beside the run.

The fork is a request like any other (the engine computes an identical fork
once, see :mod:`axon_core.fork`): the run's prompt, settings, steering and
SAEs, with one token forced at one position. :func:`fork_frames` yields the
comparison panel's HTML as the fork streams: both texts, the first diverging
token marked, the features that fired there in only one, and what changed.

Worked example::

    for panel in fork_frames(services, run, "7:6342"):   # ' Paris' forced at position 7
        ...                                               # '<div class="axon-compare-fork">…'
    run.fork                                             # (7, 6342): a share link now carries fork=7:6342
    run.export_json()["fork"]["continuation"]            # ' London, the capital of …': the run JSON carries it
    parse_fork_spec("7:6342:1733570000")                 # (7, 6342): a nonce after the two numbers is ignored
"""

from __future__ import annotations

import html
import logging
import time
from typing import TYPE_CHECKING, Iterator

from ..fork import Fork, ForkError
from ..generation import PromptError
from ..loading import LoadError
from ..session import RunSession
from .compare import fork_html

if TYPE_CHECKING:
    from .services import Services

log = logging.getLogger("axon")
FORK_INTERVAL = 0.25  # seconds between redraws of the panel while the fork streams
FORK_HINT = ('<div class="axon-fork-hint">What if another word had been chosen? In the decision strip, '
             '<b>fork</b> beside a candidate (or shift-click it) forks the run there: the model writes on as if '
             'that token had been chosen, and both continuations show here side by side.</div>')


def message(text: str) -> str:
    return f'<div class="axon-fork-note">{html.escape(text)}</div>'


def parse_fork_spec(spec) -> tuple[int, int] | None:
    """``"position:token_id"`` (the page may add ``:nonce`` so that the same fork
    clicked twice is sent twice) → (position, token_id), or None."""
    parts = str(spec or "").split(":")
    if len(parts) < 2 or not all(p.strip().isdigit() and len(p.strip()) <= 12 for p in parts[:2]):
        return None
    return int(parts[0]), int(parts[1])


def fork_frames(services: "Services", run: "RunSession | None", spec,
                interval: float = FORK_INTERVAL) -> Iterator[str]:
    """The comparison panel for the fork ``spec`` of ``run``, redrawn as the fork
    streams, at most every ``interval`` s (0: no redraw before the last, the API's)."""
    fork = parse_fork_spec(spec)
    if fork is None:
        return
    if run is None or not run.steps:
        yield message("Generate first: there is no run to fork yet.")
        return
    if not run.caught_up:
        yield message("Wait for the run to finish, then fork it.")
        return
    if services.settings.zero_gpu:
        yield message("Forks are computed by the app's engine, which does not run on ZeroGPU.")
        return
    engine = services.engine
    try:
        pair = services.pairs.get(run.meta["release"], run.meta["sae_id"])
        live = engine.submit(pair, run.meta["prompt"], run.settings, tuple(run.meta.get("steer") or ()),
                             {**run.meta}, tuple(run.saes[1:]), fork=Fork(*fork), base=list(run.steps))
    except (ForkError, PromptError, LoadError) as err:
        yield message(str(err))
        return
    except ValueError as err:  # e.g. the run's steps are not its prompt's (a replaced session)
        log.info("fork refused: %s", err)
        yield message(f"This run cannot be forked ({err}).")
        return
    forked = RunSession(run.meta, run.settings, run.labels, saes=run.saes or None)
    try:
        shown = -1
        while True:
            live.wait(len(forked.steps), interval or FORK_INTERVAL)
            for step in live.steps[len(forked.steps):]:
                forked.add(step)
            done = live.finished and len(forked.steps) >= len(live.steps)
            if done:
                break
            if interval and len(forked.steps) != shown:
                shown = len(forked.steps)
                yield fork_html(run, forked, *fork, note="writing…")
                time.sleep(interval)
        if live.state == "failed":
            yield message(live.error or "The fork failed.")
            return
        with run.lock:  # the share link and the run JSON (both exports, /generate's) carry it now
            run.fork, run.fork_steps = fork, list(forked.steps)
        yield fork_html(run, forked, *fork)
    finally:
        engine.release(live)
