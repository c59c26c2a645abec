"""The page's event handlers: :mod:`axon_core.page`'s plain values, turned into Gradio updates.

Every handler here is thin: it reads what Gradio hands it (``gr.Request``,
``gr.Progress``, ``gr.SelectData``), asks a Gradio-free function of
:mod:`axon_core.page` (tested without a server), and returns that as the
outputs ``app.py`` wired it to: ``None`` there (keep what is shown) becomes
``gr.skip()``, a notice ``gr.Info``/``gr.Warning`` (escaped: Gradio renders
them as HTML), a choice list ``gr.update(choices=..., value=...)``.

Worked example (what ``app.py`` does)::

    services = Services.start(hub_notice=configure_hub())
    handlers = Handlers(services, gpu_steps=gpu_steps_for(services))
    run_btn.click(handlers.generate_for_session, inputs, outputs, ...)
    handlers.page = demo            # once the Blocks are built (see generate_for_session)
"""

from __future__ import annotations

import html
import os
import time

import gradio as gr

from axon_core.page import causal, downloads, find, fork, inspector, links, picker, view, watchlist
from axon_core.page.evidence import steer_unit
from axon_core.page.run import Frame, Notice, Scrub, run_frames
from axon_core.page.sessions import SessionRuns
from axon_core.page.status import status_line
from axon_core.session import RunSession

from .gradio_state import drop_stale_entries


def _or_skip(value):
    return gr.skip() if value is None else value


def scrub_update(scrub: Scrub | None):
    """The token slider's update (its range and value), or skip."""
    return gr.skip() if scrub is None else gr.update(minimum=scrub.minimum, maximum=scrub.maximum, value=scrub.value)


def notify(text: str, kind: str = "info") -> None:
    """A pop-up: Gradio renders its text as HTML, so ours is escaped."""
    (gr.Warning if kind == "warning" else gr.Info)(html.escape(text))


UNKNOWN = object()  # no plain value known for an output: gr.skip() it
PAGE_LEAVES_OUT = (5, 8)  # of Generate's outputs (frame_outputs), the run JSON and the timeline: the API's only
SKIP = gr.skip()


def frame_outputs(frame: Frame, shown: list | None = None, page: bool = False) -> list:
    """One frame as Generate's outputs: text, graph, table, status, state, run JSON,
    the two download buttons, timeline, comparison, token slider; with ``page``
    (the page's own events), the text is the tokens only and the notes under it
    (sparklines, decision strip) follow last, and the run JSON and timeline
    (:data:`PAGE_LEAVES_OUT`) are left out.

    ``shown`` (one per output, :data:`UNKNOWN` where not known) is what each output
    shows now; an output with nothing new re-sends that value instead of
    ``gr.skip()``, and ``shown`` is updated. Gradio 6.31 answers every skip (an
    empty update) by building a new component and its config (0.6–2.2 ms each,
    measured, seven outputs a frame, on the thread that also streams the frames),
    while a value that did not change costs its postprocess (µs) and an empty
    diff: nothing travels. Without ``shown``, nothing new is a skip."""
    if frame.warning is not None:
        notify(frame.warning, "warning")
    out = [frame.tokens if page else frame.text, frame.figure, frame.table, frame.status, frame.run]
    if frame.ending is not None:
        ready = gr.update(interactive=True)
        out += [frame.ending.run_json, ready, ready, frame.ending.timeline, frame.ending.compare]
    else:
        out += [None] * 5
    out.append(scrub_update(frame.scrub))
    if page:
        out.append(frame.notes)
    for i, value in enumerate(out):
        if i in (3, 4):  # status and the run's state: always this frame's
            continue
        if shown is None:
            out[i] = _or_skip(value)
            continue
        if value is None or (isinstance(value, dict) and value == SKIP):
            out[i] = gr.skip() if shown[i] is UNKNOWN else shown[i]
        elif isinstance(value, dict) and value.get("__type__") == "update":
            if "value" in value:
                shown[i] = value["value"]
        else:
            shown[i] = value
    if page:
        return [v for i, v in enumerate(out) if i not in PAGE_LEAVES_OUT]
    return out


def _loading(progress):
    return None if progress is None else (lambda frac, msg: progress(frac, desc=msg))


class Handlers:
    """The handlers of one page, over this process's ``services``."""

    def __init__(self, services, gpu_steps=None):
        self.services = services
        self.gpu_steps = gpu_steps  # ZeroGPU's GPU call (ui/zerogpu.py)
        self.session_runs = SessionRuns()
        self.page = None  # the Blocks, once built: its per-session state is trimmed after each run
        self.start_values: list | None = None  # see resend_at_start

    def status_line(self, run: RunSession | None = None, extra: str | None = None, state: str = "idle") -> str:
        return status_line(self.services, run, extra, state)

    # ---- generation

    def resend_at_start(self, outputs: list, values: dict) -> None:
        """What each of Generate's ``outputs`` is set to by a run that has nothing
        new for it yet (``values``: component → value; the others are skipped until
        the run first sends them): see :func:`frame_outputs`."""
        self.start_values = [values.get(c, UNKNOWN) for c in outputs]

    def run_generation(self, *inputs, progress=None, page: bool = False):
        """Generate's frames as output lists (:func:`axon_core.page.run.run_frames`)."""
        frames = run_frames(self.services, *inputs, progress=_loading(progress), gpu_steps=self.gpu_steps)
        shown = list(self.start_values) if self.start_values is not None else None
        if shown is not None and page:
            shown.append(UNKNOWN)  # the notes
        try:
            for item in frames:
                if isinstance(item, Notice):
                    notify(item.text, item.kind)
                else:
                    yield frame_outputs(item, shown, page)
        finally:
            frames.close()

    def generate_for_session(self, request: gr.Request, progress=gr.Progress(), *inputs, page: bool = False):
        """The Generate, Enter and Steer events: :meth:`run_generation` for this
        browser session, which it keeps to one run at a time (see :class:`SessionRuns`)."""
        key = getattr(request, "session_hash", None)
        ticket = self.session_runs.start(key)
        frames = self.run_generation(*inputs, progress=progress, page=page)
        try:
            for frame in frames:
                if self.session_runs.superseded(key, ticket):
                    return
                yield frame
        finally:
            frames.close()  # Stop (or a superseding run) ends the generator at once
            self.session_runs.finish(key, ticket)
            drop_stale_entries(self.page, key)  # what Gradio would keep of this run's frames for the session's life

    def autorun_generation(self, request: gr.Request, autorun, *inputs):
        if not autorun:
            return
        yield from self.generate_for_page(request, gr.Progress(), *inputs)

    def generate_for_page(self, request: gr.Request, progress=gr.Progress(), *inputs):
        """:meth:`generate_for_session` as the page receives it: without the run JSON
        and the timeline (hundreds of KB each, sent whole), which only the API's
        ``/generate`` returns; the page asks for them when it shows them
        (:meth:`after_run`, :meth:`open_timeline`; downloads are written on demand)."""
        yield from self.generate_for_session(request, progress, *inputs, page=True)

    def after_run(self, run: RunSession | None, timeline_open):
        """After a page's run: the replay download is offered, and the timeline drawn if it is open."""
        ready = gr.update(interactive=bool(run is not None and run.steps))
        return ready, self.timeline_value(run, timeline_open)

    def timeline_value(self, run: RunSession | None, timeline_open):
        if not timeline_open or run is None or not run.steps:
            return gr.skip()
        return view.timeline_json(run)

    def open_timeline(self, run: RunSession | None):
        """The timeline's accordion opened: draw it now (it is not sent while closed)."""
        return True, self.timeline_value(run, True)

    @staticmethod
    def forget_run(run: RunSession | None) -> None:
        """A session's state expired or the session closed: drop its run's buffers."""
        if run is not None:
            run.compact()

    def engine_stats(self) -> dict:
        """Engine counters (generations computed, attached, replayed; batched and
        single steps; recent runs' step counts and times): no prompts, no content."""
        return self.services.engine.stats()

    # ---- downloads

    def prepare_download(self, run: RunSession | None, kind: str, request: gr.Request | None = None):
        """Write one download when a person asks for it (the hidden DownloadButton's value);
        a replay page links back to where this page is served."""
        app_url = self._base_url(request) if kind == "replay" else None
        path, warning = downloads.prepare_download(self.services, run, kind, app_url)
        if path is None:
            gr.Warning(warning)
            return None  # no file: the page's script then starts no download
        return gr.update(value=str(path))

    def download_for(self, kind: str):
        """The click handler of one download button (Gradio passes the request)."""
        def download(run: RunSession | None, request: gr.Request):
            return self.prepare_download(run, kind, request)
        return download

    # ---- picker

    def releases_for(self, model):
        names = picker.release_names(self.services.catalogue, model)
        value = names[0] if names else None
        return gr.update(choices=names, value=value), self.sae_ids_for(value)

    def sae_ids_for(self, release):
        ids, value = picker.sae_ids_for(self.services.catalogue, release)
        return gr.update(choices=ids, value=value)

    def layer_choices(self, release, sae_id) -> list[int]:
        return picker.layer_choices(self.services.catalogue, release, sae_id)

    def layers_for(self, release, sae_id, current):
        """The layer picker after the SAE changed: its choices, keeping what still applies."""
        choices = self.layer_choices(release, sae_id)
        return gr.update(choices=choices, value=picker.kept_layers(current, choices))

    def load_choice(self, release, sae_id, progress=gr.Progress()):
        line, warning = picker.load_choice(self.services, release, sae_id, progress=_loading(progress))
        if warning:
            gr.Warning(warning)
        return line

    def prefetch_labels(self, release, sae_id, evidence=False, progress=gr.Progress()):
        return picker.prefetch_labels(self.services, release, sae_id, evidence=bool(evidence),
                                      progress=lambda done, total, what="labels": progress(
                                          (done / total) if total else 0.0, desc=f"{what}: batch {done}"))

    # ---- inspector, steering, moving through the run

    def inspect(self, run: RunSession | None, key):
        """Inspector head, activation plot, neighbours, pushes, text, feature to steer,
        evidence, the pick (state) and the evidence timer (ticking while it is on its way)."""
        return self._inspection(inspector.inspect(self.services, run, key))

    @staticmethod
    def _inspection(v: inspector.Inspection):
        plot = None if v.history is None else gr.LinePlot(v.history, x="position", y="activation", height=180)
        return (v.head, plot, v.neighbours, v.pushes, _or_skip(v.text), _or_skip(v.steer_feature), v.evidence,
                v.picked, gr.Timer(active=v.waiting))

    def refresh_evidence(self, pick, run: RunSession | None = None):
        """The evidence timer's tick: the pick's evidence again, the timer on while more is on its way."""
        shown, waiting = inspector.refresh_evidence(self.services, pick, run)
        return _or_skip(shown), gr.Timer(active=waiting)

    def inspect_from_table(self, run, evt: gr.SelectData):
        return self.inspect(run, inspector.key_of_row(run, getattr(evt, "row_value", None)))

    def inspect_from_graph(self, run, evt: gr.SelectData):
        return self.inspect(run, evt.value if evt.value is not None else evt.index)

    def find_feature(self, run: RunSession | None, query, release=None, sae_id=None):
        """"Find a feature": the cached labels' matches at once, then (within 3 s)
        Neuronpedia's search by meaning merged in. Outputs: results, note."""
        found = find.find(self.services, run, query, release, sae_id)
        yield find.table(found), html.escape(found.note)
        deadline = time.monotonic() + 3.0
        while found.waiting and time.monotonic() < deadline:
            time.sleep(0.25)
            found = find.find(self.services, run, query, release, sae_id)
            if not found.waiting:
                yield find.table(found), html.escape(found.note)

    def inspect_from_found(self, run, release, sae_id, evt: gr.SelectData):
        """A search result in the inspector, fired or not (a feature that never fired can be steered with)."""
        return self._inspection(inspector.inspect_found(self.services, run, getattr(evt, "row_value", None),
                                                        release, sae_id))


    # ---- the watch list

    def watch_from_found(self, run: RunSession | None, current, sae_id, evt: gr.SelectData):
        """A click on a search result pins it to the watch list (fired or not)."""
        pick = watchlist.pick_of_found(getattr(evt, "row_value", None))
        if pick is None:
            return gr.skip()
        text, note = watchlist.pin(current, pick[0], pick[1], watchlist.primary_layer_of(run, sae_id))
        notify(note or f"Watching {'#' if pick[0] is None else f'L{pick[0]} #'}{pick[1]}: press Generate "
                       "to follow it at every token.")
        return text

    @staticmethod
    def pick_from_table(run: RunSession | None, evt: gr.SelectData):
        """The feature a table row names, as the Watch button's pick."""
        return watchlist.pick_of_key(run, inspector.key_of_row(run, getattr(evt, "row_value", None)))

    @staticmethod
    def pick_from_graph(run: RunSession | None, evt: gr.SelectData):
        return watchlist.pick_of_key(run, evt.value if evt.value is not None else evt.index)

    def watch_picked(self, run: RunSession | None, picked, current, sae_id):
        """The Watch button: pin the feature last clicked in the table or the graph."""
        if not picked:
            notify("Click a node of the graph or a row of the table first, then press Watch.")
            return gr.skip()
        text, note = watchlist.pin(current, picked[0], picked[1], watchlist.primary_layer_of(run, sae_id))
        if note:
            notify(note)
        return text

    def add_steer(self, run: RunSession | None, feature, strength, current, pick=None):
        """The steering box with the feature added; strength in units of the inspected
        feature's :func:`~axon_core.page.evidence.steer_unit` (the inspector says which)."""
        unit = None
        try:
            if pick and feature is not None and int(feature) == pick["index"]:
                unit = steer_unit(self.services, run, pick)
        except (TypeError, ValueError, KeyError):
            unit = None
        text, warning = inspector.add_steer(run, feature, strength, current, unit)
        if warning:
            gr.Warning(warning)
        return text

    def redraw(self, run: RunSession | None, kind):
        return _or_skip(view.redraw(run, kind))

    @staticmethod
    def _token_view(v: view.TokenView | None):
        if v is None:
            return (gr.skip(),) * 6
        return v.figure, v.text, v.table, _or_skip(v.timeline), scrub_update(v.scrub), v.notes

    def decision_gradient(self, run: RunSession | None, vs=None):
        """The decision strip's gradient flavour for the shown token (the notes: the strip), against
        the candidate clicked in it (``vs``: "position:token_id") or the runner-up."""
        return _or_skip(view.gradient_for_token(self.services, run, vs))

    def decision_measured(self, run: RunSession | None, vs=None):
        """The decision strip's measured flavour for the shown token (the notes: the strip), against
        the candidate clicked in it or the runner-up."""
        return _or_skip(view.measured_for_token(self.services, run, vs))

    def fork_run(self, run: RunSession | None, spec):
        """The strip's fork button: the run forked at that token, beside the run (streamed)."""
        shown = False
        for panel in fork.fork_frames(self.services, run, spec):
            shown = True
            yield panel
        if not shown:
            yield gr.skip()

    def fork_from_link(self, run: RunSession | None, spec):
        """A link's ``fork=position:token``, once its run is done (nothing to show: the panel stays)."""
        if not spec:
            yield gr.skip()
            return
        yield from self.fork_run(run, f"{spec[0]}:{spec[1]}")

    def scrub_to(self, run: RunSession | None, position, timeline_open=True):
        return self._token_view(view.scrub_to(run, position, timeline=bool(timeline_open)))

    def highlight_token(self, run: RunSession | None, timeline_open, evt: gr.SelectData):
        return self._token_view(view.highlight_token(run, evt.value if evt.value is not None else evt.index,
                                                     timeline=bool(timeline_open)))

    def causal_for_token(self, run: RunSession | None):
        """Graph, edge picker, effects table, note."""
        v = causal.causal_for_token(self.services, run)
        if v.figure is None:
            return gr.skip(), gr.skip(), v.table, v.note
        return v.figure, "causal", v.table, v.note

    # ---- share links

    @staticmethod
    def _base_url(request: gr.Request | None) -> str:
        return links.base_url(os.environ.get("SPACE_ID"), request.headers if request else None)

    def share_link(self, run: RunSession | None, prompt, model, release, sae_id, temperature, top_k, top_p,
                   repetition_penalty, max_tokens, seed, feature_k, threshold, steer, layers, watch=None,
                   request: gr.Request = None):
        """A link that reopens and reruns this prompt with these settings (and, when
        the graph is scrubbed to a token, shows that token; ``watch``: the watch list)."""
        return links.share_link(self.services, self._base_url(request), run.at if run is not None else None,
                                prompt, model, release, sae_id, temperature, top_k, top_p, repetition_penalty,
                                max_tokens, seed, feature_k, threshold, steer, layers, watch,
                                fork=run.fork if run is not None else None)

    def from_query(self, request: gr.Request):
        """Fill the inputs from the page's query string; start at once with autorun=1."""
        params = dict(request.query_params) if request else {}
        f = links.from_query(self.services, params, self._base_url(request))
        if f.notices:
            notify("Link: " + "; ".join(f.notices)[:300])  # a link's text is not markup
        if f.layer_notice:
            notify(f"Link: {f.layer_notice}")
        return (f.prompt, f.model, gr.update(choices=f.release_choices, value=f.release),
                gr.update(choices=f.sae_id_choices, value=f.sae_id), f.temperature, f.top_k, f.top_p,
                f.repetition_penalty, f.max_tokens, f.seed, f.feature_k, f.threshold, f.steer, f.autorun, f.at,
                f.embed_open, gr.update(choices=f.layer_choices, value=f.layers), f.watch, f.fork)
