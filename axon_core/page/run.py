"""Starting a run and viewing it, frame by frame: the Generate button's work, without Gradio.

:func:`run_frames` turns the page's inputs into a request, loads the SAEs,
hands the run to the engine (or, on ZeroGPU, computes it in this thread
through one GPU call: :func:`gpu_live`), and yields what the page should
show, as plain values: a :class:`Notice` to pop up, or a :class:`Frame`
(``None`` in a field: leave that output as it is). The UI layer turns these
into Gradio updates (``ui/handlers.py``).

Worked example::

    for item in run_frames(services, "The capital of France is", "gpt2-small",
                           "gpt2-small-res-jb", "blocks.8.hook_resid_pre",
                           0.8, 50, 0.95, 1.1, 20, 0, 12, 0.1):
        if isinstance(item, Notice):
            print(item.kind, item.text)           # info: temperature: ... clamped to ...
        elif item.ending is not None:             # the last frame(s): the run is done
            item.ending.run_json["schema"]        # 'axon-run/…'
        else:
            item.status                           # '<b data-state="running" …'
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

import pandas as pd

from ..catalogue import DEFAULT_RELEASE, DEFAULT_SAE_ID
from ..engine import LiveRun
from ..figure import to_json
from ..generation import GenerationSettings, PromptError, encode_prompt, generate
from ..loading import LoadError
from ..session import VIEW_EDGE_KINDS, RunSession
from ..steering import steering_edit
from ..watch import format_watch, resolve_watch
from .compare import comparison_html
from .fork import fork_frames, parse_fork_spec
from .request import layer_pairs, request_from_inputs
from .settings import FRAME_INTERVAL, LABEL_TAIL, TABLE_INTERVAL
from .status import status_line, table_frame

if TYPE_CHECKING:
    from .services import Services

log = logging.getLogger("axon")


@dataclass
class Notice:
    """A message to pop up (not markup: the UI escapes it). ``kind``: "info" or "warning"."""

    text: str
    kind: str = "info"


@dataclass
class Scrub:
    """The token slider: its range follows the run; its value the newest token unless scrubbed."""

    minimum: int
    maximum: int
    value: int


@dataclass
class Ending:
    """What only a finished run's frames carry (and the downloads become available)."""

    run_json: dict
    timeline: str  # the timeline figure, as JSON
    compare: str  # a steered run's side-by-side comparison (HTML), else ""


@dataclass
class Frame:
    """One update of the page: ``None`` in a field keeps what the page shows."""

    run: RunSession | None
    status: str
    text: str | None = None  # the API's: tokens (closed) + notes
    figure: str | None = None
    table: pd.DataFrame | None = None
    scrub: Scrub | None = None
    ending: Ending | None = None
    warning: str | None = None  # a failed run: pop this up (not markup)
    tokens: str | None = None  # the page's text: the tokens only (see RunSession.tokens_html)
    notes: str | None = None  # the page's, under the text: sparklines and the decision strip


def scrub_range(run: RunSession) -> Scrub | None:
    """The token slider for ``run`` (None before its first step)."""
    if not run.steps:
        return None
    first, last = run.steps[0].position, run.steps[-1].position
    return Scrub(first, max(last, first + 1), last if run.at is None else run.at)


def frame(services: "Services", run: RunSession, extra: str | None = None, final: bool = False,
          compare: str | None = None, ending: bool = True, text: bool = True) -> Frame:
    """Text, graph, status and state; on the last frame also (unless not
    ``ending``: a label tail's redraws) the run JSON, the timeline and (for a
    steered run) the comparison. The table and the slider are redrawn at most
    every TABLE_INTERVAL during a run (a browser spends ~200 ms re-rendering
    the table). A run's first final frame sends the graph as one compact full
    state (a new epoch of the delta log): the value Gradio sends whole once more
    when the event completes is then that, not the run's whole history of deltas.

    The page's notes (sparklines and the decision strip, ~10 KB of HTML replaced
    whole) follow the table's cadence during a run and come with every final
    frame; with ``text`` False (a label tail's redraws) the page's text and notes
    are left as they are (the tail's last frame sends them once). The API's
    ``text`` (tokens and notes) is always the whole of both."""
    now = time.monotonic()
    table = scrub = None
    due = final or now - run.table_at >= TABLE_INTERVAL
    if due:
        run.table_at, table, scrub = now, table_frame(run), scrub_range(run)
    end = None
    if final and ending:
        end = Ending(run.export_json(services.versions()), to_json(run.timeline()).decode(),
                     compare if compare is not None else "")
    if final and not run.stream.compacted:
        run.restart_graph("ended")
        run.stream.compacted = True
    tokens, notes = run.tokens_html(frozen=not final), run.notes_html()
    return Frame(run, status_line(services, run, extra, "done" if final else "running"), tokens + "</div>" + notes,
                 run.graph_log(final=final), table, scrub, end, tokens=tokens if text else None,
                 notes=notes if due and text else None)


def failure(services: "Services", message: str, run: RunSession | None = None) -> Frame:
    return Frame(run, status_line(services, run, message, "failed"), warning=message)


def view(services: "Services", run: RunSession, live, pull: Callable[[], None] | None = None) -> Iterator[Frame]:
    """Frames of ``live`` at the view's own cadence: at most one per
    FRAME_INTERVAL, only when there are new steps (or new labels); a replayed run
    is revealed at the pace it was computed. The engine never waits on this.
    ``pull`` (ZeroGPU) computes the next steps in this thread instead."""
    run.follow(live)
    while not run.caught_up:
        if live.finished:  # a paced replay, or the last steps of a run that just ended
            time.sleep(min(FRAME_INTERVAL, run.next_due()))
        elif pull is not None:
            pull()
        else:
            live.wait(len(run.steps), FRAME_INTERVAL)  # new steps, or the frame interval
        # frames cost the server ~10 ms each: with many runs live, each view draws less often
        scale = max(1.0, services.engine.live_count / 2)
        time.sleep(run.frame_wait(scale))
        if (run.sync() or run.labels_changed()) and not run.caught_up and run.frame_due(scale=scale):
            yield frame(services, run)
    run.sync()


def label_tail(services: "Services", run: RunSession) -> Iterator[bool]:
    """After a run: while labels of the newest token's features are still on
    their way (and Neuronpedia answers), redraw as they arrive, for LABEL_TAIL s."""
    labels = services.labels
    if not run.np_id or not run.steps or labels.status().get("reachable") is False:
        return
    wanted = [f.index for f in run.steps[-1].features[:8]]
    deadline = time.monotonic() + LABEL_TAIL
    while labels.pending(run.np_id, wanted) and time.monotonic() < deadline:
        time.sleep(0.2)
        if run.labels_changed():
            yield True


def compute_steps(services: "Services", release: str, sae_id: str, prompt: str, settings: GenerationSettings,
                  steer: tuple = (), extra_ids: tuple = (), watch: tuple = ()):
    """One whole run in this process, as plain TokenSteps (ZeroGPU's GPU call
    runs this in a worker and pickles each step back), stopped 5 s before the
    GPU call's time is up. ``extra_ids``: sae ids of the release read at once;
    ``watch``: the features followed (canonical keys)."""
    pair = services.pairs.get(release, sae_id)
    extra = [services.pairs.get(release, x) for x in extra_ids]
    edit = steering_edit(pair.sae, steer) if steer else None
    deadline = time.monotonic() + services.settings.gpu_seconds - 5
    for step in generate(pair, prompt, settings, edit, extra=extra, watch=watch):
        yield step
        if time.monotonic() > deadline:
            return


def gpu_live(gpu_steps, pair, req, meta: dict, steer: tuple, extra=(),
             watch: tuple = ()) -> tuple[LiveRun, Callable[[], None]]:
    """A LiveRun fed by ``gpu_steps`` (:func:`compute_steps` inside a GPU call)
    in the caller's thread, and the function that feeds it for about one frame interval."""
    live = LiveRun(None, meta, req.settings, steer)
    live.started, live.state = time.monotonic(), "running"
    more = {"watch": watch} if watch else {}  # a GPU call of an older signature still works unwatched
    steps = gpu_steps(pair.choice.release, pair.choice.sae_id, req.prompt, req.settings, steer,
                      tuple(x.choice.sae_id for x in extra), **more)

    def pull():
        deadline = time.monotonic() + FRAME_INTERVAL
        try:
            while time.monotonic() < deadline:
                step = next(steps)
                live._append([step], new_token=not step.is_prompt)
        except StopIteration:
            live._end("done")
        except Exception as err:  # noqa: BLE001 - the run fails, the app goes on
            log.exception("GPU run failed")
            live._end("failed", error=f"Generation failed ({type(err).__name__}); the app is still running.")

    return live, pull


def run_frames(services: "Services", prompt, model, release, sae_id, temperature, top_k, top_p, repetition_penalty,
               max_tokens, seed, feature_k, threshold, steer="", edge_kind="npmi", at=None, layers=None, watch=None,
               fork=None, progress: Callable[[float, str], Any] | None = None, gpu_steps=None) -> Iterator[Notice | Frame]:
    """Generate from ``prompt`` and yield a frame per view update (see the module doc).

    The engine computes the run (or an identical one in flight, or replays a
    finished one); this view samples it. With ``steer`` ("feature:coefficient,
    ..."), the plain run is computed alongside and both are compared side by
    side at the end. ``at`` (a token position, from a link) is shown at the end.
    ``layers`` (a list, or "2,5,8,11"): read the release's SAEs at these
    layers too, in the same forward (each layer a plane of the graph).
    ``watch`` ("7124, 8:88"): features whose exact activation every token reports
    (sparklines under the text; see :mod:`axon_core.watch`).
    ``fork`` ("position:token_id", the API's): once the run is done, it is forked
    there (:mod:`axon_core.page.fork`); the comparison shows both texts and the
    run JSON carries the fork (``"fork"``).
    ``progress(fraction, message)`` hears how loading goes; ``gpu_steps``
    (ZeroGPU only) is :func:`compute_steps` wrapped in a GPU call.
    """
    req, notices = request_from_inputs(services.settings.limits, prompt, model, release, sae_id, temperature, top_k,
                                       top_p, repetition_penalty, max_tokens, seed, feature_k, threshold, steer,
                                       layers, watch)
    if notices:
        yield Notice("; ".join(notices)[:300])
    try:
        pair = services.pairs.get(req.release or DEFAULT_RELEASE, req.sae_id or DEFAULT_SAE_ID, progress=progress)
        extra = layer_pairs(services, pair, req.layers, notices, progress=progress)
        watched, watch_notes = resolve_watch(req.watch, [pair, *extra])
        notices += watch_notes
        services.bulk_labels(pair, *extra)  # every layer's labels, in bulk, in the background
    except LoadError as err:
        yield failure(services, "; ".join([str(err)] + notices))
        return
    if req.model and req.model != pair.choice.model:
        notices.append(f"model {req.model[:40]} does not go with release {pair.choice.release}: "
                       f"ran {pair.choice.model}")
    meta = {"model": pair.choice.model, "release": pair.choice.release, "sae_id": pair.choice.sae_id,
            "hook_name": pair.hook_name, "neuronpedia_id": pair.neuronpedia_id, "device": pair.device,
            "prompt": req.prompt, **({"watch": format_watch(watched)} if watched else {})}
    kind = edge_kind if isinstance(edge_kind, str) and edge_kind in VIEW_EDGE_KINDS else "npmi"
    run = RunSession({**meta, "steer": req.steer}, req.settings, services.labels, w_dec=pair.sae.W_dec,
                     edge_kind=kind, frame_interval=FRAME_INTERVAL, saes=[pair, *extra] if extra else None,
                     watch=watched)
    zero_gpu, engine = services.settings.zero_gpu, services.engine
    lives, pulls = [], [None, None]
    try:
        try:
            if zero_gpu:  # checked here, before a GPU call is spent on them
                encode_prompt(pair.model, req.prompt)
                steering_edit(pair.sae, req.steer)
                for i, steer_ in enumerate([req.steer, ()] if req.steer else [req.steer]):
                    live, pulls[i] = gpu_live(gpu_steps, pair, req, meta, steer_, extra, watched if i == 0 else ())
                    lives.append(live)
            else:
                lives.append(engine.submit(pair, req.prompt, req.settings, req.steer, meta, extra, watched))
                if req.steer:  # the plain run, computed alongside (or already cached)
                    lives.append(engine.submit(pair, req.prompt, req.settings, (), meta, extra))
        except (PromptError, ValueError) as err:  # ValueError: a steering spec this SAE cannot take
            yield failure(services, "; ".join([str(err)] + notices), run)
            return
        live = lives[0]
        yield from view(services, run, live, pulls[0])
        if live.state == "failed":
            yield failure(services, live.error or "Generation failed.", run)
            return
        compare = None
        if req.steer:
            plain_live = lives[1]
            while not plain_live.finished:
                if pulls[1] is not None:
                    pulls[1]()
                else:
                    plain_live.wait(len(plain_live.steps), FRAME_INTERVAL)
            plain = RunSession(meta, req.settings, services.labels, saes=run.saes or None)
            for step in plain_live.steps:
                plain.add(step)
            compare = comparison_html(plain, run)
        if fork not in (None, ""):
            panel = None
            if parse_fork_spec(fork) is None:
                notices.append("fork: not position:token_id, ignored")
            for panel in fork_frames(services, run, fork, interval=0):
                pass
            if panel:
                compare = (compare or "") + panel
        if at is not None:
            run.scrub(at)
        ended = [n for n in live.notices if n.startswith("stopped")][-1:]
        extra = "; ".join(notices + ended) or None
        yield frame(services, run, extra=extra, final=True, compare=compare)
        # labels that arrive now redraw the graph and table; the page's text (its token
        # titles name the labels: ~34 KB replaced whole), the run JSON and the timeline
        # (hundreds of KB, sent whole) follow once, with them, when the tail ends
        tail = False
        for _ in label_tail(services, run):
            tail = True
            yield frame(services, run, extra=extra, final=True, compare=compare, ending=False, text=False)
        if tail:
            yield frame(services, run, extra=extra, final=True, compare=compare)
    except Exception as err:  # noqa: BLE001 - a person sees a message, the log the trace
        log.exception("generation failed")
        yield failure(services, f"Generation failed ({type(err).__name__}); the app is still running.", run)
    finally:
        if not zero_gpu:
            for live in lives:
                engine.release(live)
        run.compact()
