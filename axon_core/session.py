"""One browser session's run: steps → graph → layout → figure, tables and exports.

All state of what one person sees lives in a :class:`RunSession`; the app keeps
one per browser session (``gr.State``), so two sessions never share a graph.
Labels come from a process-wide :class:`~axon_core.labels.LabelService` and are
only ever *looked up* here (never awaited): a frame shows what is known.

The engine computes a run; a session only views it, sampling the latest
state at its own cadence (frames never slow the token loop)::

    live = engine.submit(pair, "The capital of France is", settings)
    run = RunSession(meta={"model": "gpt2-small", "release": "gpt2-small-res-jb",
                           "sae_id": "blocks.8.hook_resid_pre",
                           "neuronpedia_id": "gpt2-small/8-res-jb"},
                     settings=settings, labels=None)
    run.follow(live)
    while not run.caught_up:
        live.wait(len(run.steps), timeout=0.1)
        if run.sync():
            payload = run.figure_json()      # str: a Plotly figure as JSON
    run.table()[0]   # {'feature': 1234, 'label': 'Feature 1234', 'activation': 5.1, ...}
    run.scrub(3); run.figure_json()          # the graph as it was at token 3
"""

from __future__ import annotations

import bisect
import html
import threading
import time
from dataclasses import asdict
from typing import Any

import numpy as np

from .depth import virtual_weights
from .edges import EDGE_KINDS, SIGNED_KINDS, npmi_neighbours, score_edge_columns, score_edges
from .export import download_name, run_to_json, standalone_html
from .features import key_name, node_key, split_key, split_keys
from .deltas import GraphStream
from .figure import Scene, figure_dict, scene_of, to_json
from .generation import GenerationSettings, LayerSae, TokenStep, hook_layer
from .graph import GraphState
from .labels import fallback_label
from .layout import ForceLayout
from .sparklines import sparklines_html
from .strip import hover_text, strip_html
from .timeline import timeline_figure

NEURONPEDIA_PAGE = "https://www.neuronpedia.org/{np_id}/{index}"
EXPORT_ZOOM = 0.72  # the standalone page's camera distance, relative to the app's
PLANE_GAP = 3.0  # distance between two layers' planes, in ideal edge lengths of the layout
# what a view can draw: the edge kinds of axon_core.edges, and the latest causal check's effects
VIEW_EDGE_KINDS = EDGE_KINDS + ("causal",)


def token_span(step: TokenStep, extra_class: str = "", attrs: str = "") -> str:
    """One token of a text as an HTML span (escaped; newlines shown as ↵). A token
    that only begins a character split across tokens shows nothing; the token
    that completes it shows the whole character (see GlyphJoiner)."""
    shown = step.shown
    cls = ("tok prompt" if step.is_prompt else "tok gen") + ("" if shown else " part")
    cls += f" {extra_class}" if extra_class else ""
    text = html.escape(shown).replace("\n", "↵<br>")
    return f'<span class="{cls}"{attrs}>{text}</span>'


class RunSession:
    """What one browser session sees of one run: the steps it has been shown,
    and the graph, layout, tables and exports derived from them.

    It *views* a run that the engine steps (:meth:`follow`, then :meth:`sync` at
    the view's own cadence), or is fed steps directly (:meth:`add`). A replayed
    run is revealed at the pace it was computed. ``at`` (a token position, or
    None for "live") shows the graph as it was at that token.

    ``saes`` (the run's :attr:`Generation.saes`, primary first): a run of
    several layers, whose nodes are ``(layer, index)`` keys
    (:func:`~axon_core.features.node_key`); each layer is drawn on its own
    plane (depth in the scene, earliest at the bottom), labels come from each
    SAE's own Neuronpedia id, and the ``virtual`` and ``causal`` edge kinds
    join layers.

    ``watch`` (canonical (layer, index) keys, :func:`~axon_core.watch.resolve_watch`):
    the features the run follows; each step's ``watched`` holds their exact
    activations, drawn as sparklines under the text (:meth:`watch_html`) and
    listed on each token's hover; :attr:`watched_keys` are their graph keys.
    """

    def __init__(
        self,
        meta: dict[str, Any],
        settings: GenerationSettings,
        labels=None,
        frame_interval: float = 0.1,
        max_nodes: int = 300,
        w_dec=None,
        edge_kind: str = "npmi",
        saes=None,
        watch=(),
    ):
        self.meta, self.settings, self.labels = dict(meta), settings, labels
        self.np_id: str | None = meta.get("neuronpedia_id")
        self.frame_interval, self.max_nodes = frame_interval, max_nodes
        self.w_dec, self.edge_kind = w_dec, edge_kind  # edge_kind: one of VIEW_EDGE_KINDS
        self.saes: tuple[LayerSae, ...] = tuple(LayerSae.of(x) for x in (saes or ()))
        self.layered = len(self.saes) > 1
        self.by_layer: dict[int, LayerSae] = {x.layer: x for x in self.saes} if self.layered else {}
        self.np_ids: dict[int | None, str | None] = {None: self.np_id}
        self.plane_of: dict[int, float] = {}
        if self.layered:
            self.np_ids.update({x.layer: x.neuronpedia_id for x in self.saes})
            order = sorted(self.by_layer)
            self.plane_of = {layer: (r - (len(order) - 1) / 2) * PLANE_GAP for r, layer in enumerate(order)}
            self.w_dec = {layer: x.sae.W_dec for layer, x in self.by_layer.items()}
        # the watched features as graph node keys, in the order of each step's ``watched``
        self.watched_keys: tuple[int, ...] = tuple(node_key(la, i) for la, i in watch)
        self.causal: dict[str, np.ndarray] | None = None  # the latest causal check's edges (see set_causal)
        # the decision strip's gradient flavour, where asked for:
        # {deciding position: {other candidate's token id: {"other", "pushes", "ms"}}}
        self.gradients: dict[int, dict[int, dict]] = {}
        # the measured flavour, where asked for: {deciding position: {other: {"other", "logit_diff", "prob", "rows", "ms"}}}
        self.measured: dict[int, dict[int, dict]] = {}
        self.fork: tuple[int, int] | None = None  # the fork last shown beside this run (a share link carries it)
        self.fork_steps: list[TokenStep] = []  # that fork's steps (the run JSON carries them, see export_json)
        self.at: int | None = None  # scrubbed to this token position (None: follow the run)
        self.graph = GraphState()
        self.stream = GraphStream(self.graph.decay, self.planes())  # what this viewer's player was sent
        self.layout = ForceLayout(seed=0)
        self.steps: list[TokenStep] = []
        self.step_seconds: list[float] = []  # wall time per generated token (when fed directly)
        self.notices: list[str] = []
        self.live = None  # the engine's LiveRun this session views
        self.lock = threading.RLock()  # the view loop and a scrub / click may touch it at once
        self._reveal_from: float | None = None
        self._last_frame = float("-inf")
        self._last_step_time: float | None = None
        self._figure: dict | None = None
        self._labels_seen = -1
        self._laid_out = -1  # graph.tokens_seen at the last layout update
        self._spans: list[str] = []  # each token's span, kept between frames
        self._spans_epoch = None
        self.table_at = float("-inf")  # when the view last sent the table
        self._known: dict[int, str] = {}  # labels known for this session's features
        self._unknown: dict[int, str] = {}  # fallbacks, until new labels arrive
        self._unknown_epoch = None
        if self.labels is not None and self.watched_keys:  # the watched features' names, first
            self.prioritize(self.watched_keys)

    # ---- feeding ----------------------------------------------------------

    def follow(self, live, now: float | None = None) -> None:
        """View ``live`` (an engine LiveRun). Steps already computed when a view
        attaches to a run in flight show at once; a finished run (a replay) is
        revealed at the pace it was computed."""
        self.live = live
        now = time.monotonic() if now is None else now
        ahead = live.offsets[-1] if live.offsets and not live.finished else 0.0
        self._reveal_from = now - ahead

    def sync(self, now: float | None = None) -> int:
        """Take the steps of the followed run that are due; returns how many."""
        live = self.live
        if live is None:
            return 0
        now = time.monotonic() if now is None else now
        due = len(live.steps)
        if live.finished:  # paced replay
            elapsed = now - self._reveal_from
            due = bisect.bisect_right(live.offsets, elapsed, lo=len(self.steps), hi=due)
        with self.lock:
            new = live.steps[len(self.steps): due]
            for step in new:
                self.add(step)
        return len(new)

    @property
    def caught_up(self) -> bool:
        """The followed run has ended and every step of it has been shown."""
        live = self.live
        return live is None or (live.finished and len(self.steps) >= len(live.steps))

    def next_due(self, now: float | None = None) -> float:
        """Seconds until the next step of a paced replay is due (0 if one is)."""
        live = self.live
        if live is None or not live.finished or len(self.steps) >= len(live.steps):
            return 0.0
        now = time.monotonic() if now is None else now
        return max(0.0, live.offsets[len(self.steps)] - (now - self._reveal_from))

    def add(self, step: TokenStep) -> None:
        with self.lock:
            now = time.perf_counter()
            if not step.is_prompt and self._last_step_time is not None:
                self.step_seconds.append(now - self._last_step_time)
            self._last_step_time = now
            self.steps.append(step)
            self.graph.add_step(step)
            if step.notice:
                self.notices.append(step.notice)
        if self.labels is not None:
            wanted: dict[str, list[int]] = {}
            for f in step.features:
                np_id = self.np_ids.get(f.layer, self.np_id)
                if np_id:
                    wanted.setdefault(np_id, []).append(f.index)
            for np_id, indices in wanted.items():
                self.labels.request(np_id, indices)

    def frame_wait(self, scale: float = 1.0, now: float | None = None) -> float:
        """Seconds until another frame may be sent (``scale`` stretches the interval)."""
        now = time.perf_counter() if now is None else now
        return max(0.0, self._last_frame + self.frame_interval * scale - now)

    def frame_due(self, now: float | None = None, scale: float = 1.0) -> bool:
        """Whether enough time has passed to send another frame (throttling); if so,
        the frame is counted as sent."""
        now = time.perf_counter() if now is None else now
        if self.frame_wait(scale, now) == 0.0:
            self._last_frame = now
            return True
        return False

    def labels_changed(self) -> bool:
        """Whether labels arrived since the last call (a frame should show them)."""
        seen = getattr(self.labels, "arrivals", 0)
        changed = seen != self._labels_seen
        self._labels_seen = seen
        return changed

    # ---- reading ----------------------------------------------------------

    def label(self, key: int) -> str:
        """The feature's label (``key``: a graph node, see :attr:`FeatureHit.key`;
        looked up under its own SAE's Neuronpedia id), or its number while
        unknown. Known labels are kept for the session (they do not change);
        unknown ones are asked again only after new labels arrived, so a frame
        of 300 nodes and 200 tokens does not query the label store a thousand times."""
        known = self._known.get(key)
        if known is not None:
            return known
        layer, index = split_key(key)
        if self.labels is None:
            return fallback_label(index)
        epoch = getattr(self.labels, "arrivals", None)
        if epoch != self._unknown_epoch:
            self._unknown, self._unknown_epoch = {}, epoch
        if key in self._unknown:
            return self._unknown[key]
        np_id = self.np_ids.get(layer, self.np_id)
        label = self.labels.label(np_id, index)
        if self.labels.known(np_id, index) is not None:
            self._known[key] = label
        else:
            self._unknown[key] = label
        return label

    def key(self, index: int, layer: int | None = None) -> int:
        """The graph node of feature ``index`` (of the SAE at ``layer`` in a run of several)."""
        return node_key(layer if self.layered else None, index)

    def ms_per_token(self) -> float | None:
        """The engine's median time per new token of this run (ms), or, when
        fed directly, the wall time between added tokens."""
        if self.live is not None:
            return self.live.ms_per_token()
        s = sorted(self.step_seconds)
        return 1e3 * s[len(s) // 2] if s else None

    def scrub(self, position: int | None) -> None:
        """Show the graph at token ``position`` (None, or the newest token: follow the run)."""
        with self.lock:
            if position is None or not self.steps or int(position) >= self.steps[-1].position:
                self.at = None  # the newest token: follow the run
                return
            if self.at is None and self._laid_out != self.graph.tokens_seen:
                self._relayout()  # every node seen so far gets its place before positions freeze
            self.at = max(int(position), self.steps[0].position)

    def scene(self, relayout: bool = True) -> Scene:
        """The current frame's :class:`Scene`, laid out warm-started from the last one.

        Positions always follow co-firing strength (so switching the edge kind
        does not move nodes) and stay put while scrubbed; the edges drawn are
        those of ``edge_kind``; the ringed (and named) nodes are the newest
        token's features, or the scrubbed token's.
        """
        with self.lock:
            scrubbed = self.at is not None
            if relayout and not scrubbed or not self.layout.positions:
                snap = self._relayout()
            positions = self.layout.positions
            if scrubbed:
                snap = self.graph.snapshot_at(self.at, among=positions)
            elif not relayout:
                snap = self.graph.snapshot(max_nodes=self.max_nodes, keep=self.watched_keys)
            kind = self.edge_kind
            if kind == "causal":
                a, b, score = self._causal_columns()
            else:
                kind = kind if self.layered or kind != "virtual" else "npmi"
                a, b, score, _ = score_edge_columns(self.graph, snap, kind, w_dec=self.w_dec,
                                                    saes={la: x.sae for la, x in self.by_layer.items()})
            shift = 1.0 if kind == "npmi_all" else 0.0  # NPMI in [-1, 1] → width in [0, 2]
            scene = scene_of(snap, positions, edges=(a, b, score + shift),
                             signed=kind in SIGNED_KINDS or kind == "causal", planes=self.planes())
        self.prioritize([scene.ids[r] for r, _, _ in scene.named])  # the scene's names, strongest first
        return scene

    def planes(self) -> dict[float, str]:
        return {z: f"layer {layer}" for layer, z in self.plane_of.items()}

    def figure(self, relayout: bool = True) -> dict:
        """The current frame's figure (a Plotly dict) of :meth:`scene`."""
        scene = self.scene(relayout)
        with self.lock:
            self._figure = figure_dict(None, None, self.label, scene=scene)
        return self._figure

    def graph_log(self, relayout: bool = True, final: bool = False) -> str:
        """The graph as the page's player receives it: this viewer's delta log
        (:class:`axon_core.deltas.GraphStream`), extended by this frame."""
        scene = self.scene(relayout)
        with self.lock:
            return self.stream.update(self.steps, scene, self.label, at=self.at, final=final,
                                      watched=self.watched_keys)

    def restart_graph(self, reason: str) -> None:
        """The next :meth:`graph_log` sends the full state (an edge kind changed, a
        check replaced the edges, a page reconnected)."""
        with self.lock:
            self.stream.restart(reason)

    def prioritize(self, keys) -> None:
        """Ask for these features' labels before all others, in this order (the
        scene's names, strongest first; the table's rows): what a person reads."""
        if self.labels is None or not hasattr(self.labels, "prioritize"):
            return
        wanted: dict[str | None, list[int]] = {}
        for key in keys:
            if key not in self._known:
                layer, index = split_key(key)
                wanted.setdefault(self.np_ids.get(layer, self.np_id), []).append(index)
        for np_id, indices in wanted.items():
            self.labels.prioritize(np_id, indices)

    def _relayout(self):
        snap = self.graph.snapshot(max_nodes=self.max_nodes, keep=self.watched_keys)
        planes = None
        if self.layered:
            layer, _ = split_keys(snap.ids)
            planes = np.array([self.plane_of.get(la, np.nan) for la in layer.tolist()])
        self.layout.update_arrays(snap.ids, snap.edge_a, snap.edge_b, snap.edge_weight, planes)
        self._laid_out = self.graph.tokens_seen
        return snap

    # ---- depth: measured effects between layers ---------------------------

    def set_causal(self, checks) -> list[dict]:
        """Keep the causal checks of one token (``depth.CausalCheck`` s, one per
        source layer) for the ``causal`` edge kind, and return the rows
        of the side-by-side table: for every (earlier feature, later feature)
        pair the check measured, its co-firing NPMI over the run, its virtual
        weight and the measured effect (``effect`` = baseline − ablated
        activation: > 0, the earlier feature helped the later one fire)."""
        rows = []
        src, dst, effect = [], [], []
        for check in checks:
            for target in check.targets:
                v = virtual_weights(self.by_layer[check.source_layer], self.by_layer[target.layer],
                                    check.features, target.features)
                for i, f in enumerate(check.features):
                    for j, g in enumerate(target.features):
                        a, b = node_key(check.source_layer, f), node_key(target.layer, g)
                        moved = -float(target.delta[i, j])
                        rows.append({
                            "source": key_name(a), "source_label": self.label(a),
                            "target": key_name(b), "target_label": self.label(b),
                            "npmi": self.graph.npmi(a, b) if a in self.graph and b in self.graph else None,
                            "virtual_weight": float(v[i, j]), "effect": moved,
                        })
                        src.append(a), dst.append(b), effect.append(moved)
        rows.sort(key=lambda r: -abs(r["effect"]))
        with self.lock:
            self.causal = {"a": np.array(src, np.int64),
                           "b": np.array(dst, np.int64), "effect": np.array(effect, np.float64)}
        return rows

    def _causal_columns(self, share: float = 0.05):
        """Edges of the latest causal check: effects at least ``share`` of the largest in size."""
        c = self.causal
        if not c or not len(c["effect"]):
            z = np.zeros(0, np.int64)
            return z, z, np.zeros(0)
        keep = np.abs(c["effect"]) >= share * np.abs(c["effect"]).max()
        keep &= c["effect"] != 0
        return c["a"][keep], c["b"][keep], c["effect"][keep]

    def edge_counts(self) -> dict[str, int]:
        """How many co-firing pairs there are and how many the NPMI filter keeps."""
        snap = self.graph.snapshot(max_nodes=10**9, max_edges=10**9)
        kept = score_edges(self.graph, snap, "npmi", max_edges=10**9)
        return {"co_firing_pairs": len(self.graph.edges()), "npmi_kept": len(kept)}

    def timeline(self) -> dict:
        return timeline_figure(self.steps, self.label, highlight_position=self.at)

    def figure_json(self, relayout: bool = True) -> str:
        return to_json(self.figure(relayout)).decode()

    def _span(self, s: TokenStep, cls: str = "", before: TokenStep | None = None) -> str:
        top = ", ".join(f"{self.label(f.key)} ({f.activation:.1f})" for f in s.features[:5])
        prob = f" · p={s.prob:.3f}" if s.prob is not None else ""
        why = hover_text(s, before)
        why = f" · {why}" if why else ""
        watched = ""
        if s.watched:
            watched = " · watched: " + ", ".join(f"{self.label(k)[:32]} ({v:.2f})"
                                                 for k, v in zip(self.watched_keys, s.watched))
        title = html.escape(f"pos {s.position}{prob}{why} · {top or 'no features'}{watched}", quote=True)
        return token_span(s, cls, f' data-pos="{s.position}" title="{title}"')

    def text_html(self, highlight: int | None = None) -> str:
        """The text and what is shown under it: :meth:`tokens_html` (closed),
        then :meth:`notes_html` (the API's text output; the page shows them in two places)."""
        return self.tokens_html(highlight) + "</div>" + self.notes_html()

    def tokens_html(self, highlight: int | None = None, frozen: bool = False) -> str:
        """The text so far, one span per token; hovering shows its top features;
        the scrubbed token is marked, and with ``highlight`` (a feature) the
        tokens it fired on. Spans are kept between frames and rebuilt only when
        labels arrive (not while ``frozen``: a running view's frames), so a frame
        formats only its new tokens. Left unclosed (the browser closes it): a
        frame's text then begins with the last frame's, and Gradio sends only
        the new spans."""
        with self.lock:
            steps, at = list(self.steps), self.at
            epoch = getattr(self.labels, "arrivals", None)
            if epoch != self._spans_epoch and not (frozen and self._spans):
                self._spans, self._spans_epoch = [], epoch
            for i in range(len(self._spans), len(steps)):
                self._spans.append(self._span(steps[i], before=steps[i - 1] if i else None))
            parts = self._spans[: len(steps)]
        marked = {i for i, s in enumerate(steps) if s.position == at}
        if highlight is not None:
            marked |= {i for i, s in enumerate(steps) if any(f.key == highlight for f in s.features)}
        if marked:
            parts = list(parts)
            for i in marked:
                s = steps[i]
                lit = highlight is not None and any(f.key == highlight for f in s.features)
                cls = " ".join(c for c in ("lit" if lit else "", "here" if s.position == at else "") if c)
                parts[i] = self._span(s, cls, steps[i - 1] if i else None)
        return f'<div class="axon-text">{"".join(parts)}'

    def notes_html(self) -> str:
        """What the page shows under the text: the watch list's sparklines and the decision strip."""
        with self.lock:
            steps, at = list(self.steps), self.at
        return self.watch_html(steps, at) + self.decision_html(steps, at)

    def watch_html(self, steps: list[TokenStep] | None = None, at: int | None = None) -> str:
        """The watched features' sparklines (see :mod:`axon_core.sparklines`); "" when none."""
        if not self.watched_keys:
            return ""
        with self.lock:
            steps = list(self.steps) if steps is None else steps
            at = self.at if at is None else at
        span = len(steps)
        if not self.caught_up or self.live is None:  # the axis the run may reach, so the line grows
            prompt = sum(s.is_prompt for s in steps)
            span = max(span, prompt + self.settings.max_new_tokens)
        names = [f"{key_name(k)} · {self.label(k)}" for k in self.watched_keys]
        return sparklines_html(steps, self.watched_keys, names, at, span)

    def decision_html(self, steps: list[TokenStep] | None = None, at: int | None = None) -> str:
        """The decision strip for the newest token, or the scrubbed one (see :mod:`axon_core.strip`)."""
        with self.lock:
            steps = list(self.steps) if steps is None else steps
            at = self.at if at is None else at
        return strip_html(steps, at, self.label, self.gradients, self.measured)

    def table(self, n: int = 20) -> list[dict]:
        """Top features: of the newest token and then the brightest; when
        scrubbed, the features of that token. ``feature`` is the SAE's index,
        ``layer`` the block of the SAE it belongs to."""
        with self.lock:
            if self.at is None:
                rows = self.graph.top_features_table(self.label, n=n)
            else:
                step = next((s for s in self.steps if s.position == self.at), None)
                rows = []
                for f in (step.features if step else ())[:n]:
                    node = self.graph.node(f.key)
                    rows.append({"feature": f.key, "label": self.label(f.key), "activation": f.activation,
                                 "peak": node.peak, "tokens": node.tokens, "attribution": f.attribution})
        self.prioritize([row["feature"] for row in rows])
        for row in rows:
            layer, row["feature"] = split_key(row["feature"])
            row["layer"] = self.primary_layer if layer is None else layer
        return rows

    @property
    def primary_layer(self) -> int | None:
        """The block of the run's (first) SAE."""
        return self.saes[0].layer if self.saes else hook_layer(self.meta.get("hook_name") or "")

    def inspector(self, key: int, tokenizer_decode=None) -> dict[str, Any] | None:
        """What the inspector shows for one feature (a graph node, see
        :meth:`key`), or None if it is not in this run."""
        if key not in self.graph:
            return None
        node = self.graph.node(key)
        decode = tokenizer_decode or (lambda t: f"#{t}")
        layer, index = split_key(key)
        np_id = self.np_ids.get(layer, self.np_id)
        url = NEURONPEDIA_PAGE.format(np_id=np_id, index=index) if np_id else None
        return {
            "index": index,
            "layer": self.primary_layer if layer is None else layer,
            "label": self.label(key),
            "activation": node.activation,
            "peak": node.peak,
            "tokens": node.tokens,
            "history": list(node.history),
            "neighbours": [
                {"feature": key_name(j) if self.layered else j, "label": self.label(j), "npmi": v, "co_fired": c}
                for j, v, c in npmi_neighbours(self.graph, key)
            ],
            "pushes": [{"token": decode(t), "attribution": a} for t, a in self.graph.top_pushes(key)],
            "url": url,
        }

    def compact(self) -> None:
        """After the run: let go of the engine's run and the layout's work buffers
        (a scrub or an edge switch never re-lays out), so an idle session is small."""
        with self.lock:
            if self.live is not None and self.caught_up:
                self.live = _Finished(self.live)
            self.layout.release_buffers()
            self._figure = None  # ~0.5 MB of Python floats; export_html redraws it

    # ---- exports ----------------------------------------------------------

    def export_json(self, versions: dict[str, str] | None = None) -> dict:
        """The run as JSON (:func:`~axon_core.export.run_to_json`) plus ``"layout"``:
        the positions a scrub shows (:meth:`layout_json`), so a replay draws the
        nodes where this view did."""
        meta = {**self.meta, "versions": versions or {}, "ms_per_token": self.ms_per_token()}
        with self.lock:
            fork = (self.fork, list(self.fork_steps)) if self.fork is not None and self.fork_steps else None
        if not self.layered:
            d = run_to_json(self.steps, self.settings, meta, self.graph, self.label, fork=fork)
        else:
            layer_labels = {layer: (lambda i, la=layer: self.label(node_key(la, i))) for layer in self.by_layer}
            d = run_to_json(self.steps, self.settings, meta, self.graph, self.label, saes=self.saes,
                            layer_labels=layer_labels, fork=fork)
        d["layout"] = self.layout_json()
        return d

    def layout_json(self) -> dict:
        """Where this view puts its nodes when scrubbed: ``{"positions": {"7124":
        [x, y, z], ...}, "max_nodes": 300}`` (keys as in the run JSON's labels,
        ``"8:7124"`` in a run of several layers; coordinates rounded to 3 decimals,
        as the figure draws them). Lays out the newest tokens first where a scrub
        would, so a scrub after this call shows exactly these positions."""
        with self.lock:
            if self.steps and self.at is None and self._laid_out != self.graph.tokens_seen:
                self._relayout()
            positions = {}
            for key, xyz in self.layout.positions.items():
                layer, index = split_key(key)
                name = str(index) if layer is None else f"{layer}:{index}"
                positions[name] = [round(float(v), 3) for v in xyz]
        return {"positions": positions, "max_nodes": self.max_nodes}

    def export_html(self) -> str:
        """The graph as one offline page: the camera closer than the app's (a
        page-wide canvas, not a 620 px box) and the text with whole characters."""
        fig = self._figure or self.figure(relayout=False)
        scene = fig["layout"]["scene"]
        eye = {k: round(v * EXPORT_ZOOM, 3) for k, v in scene["camera"]["eye"].items()}
        fig = {**fig, "layout": {**fig["layout"], "scene": {**scene, "camera": {**scene["camera"], "eye": eye}}}}
        title = f"AXON · {self.meta.get('release', '')} / {self.meta.get('sae_id', '')}"
        return standalone_html(fig, title, "".join(s.shown for s in self.steps))

    def download_name(self, ext: str, day) -> str:
        """What a download of this run is saved as (``day``: a ``datetime.date``), e.g.
        ``axon-the-capital-of-france-is-gpt2-small-20261201.json``."""
        prompt = "".join(s.shown for s in self.steps if s.is_prompt)
        return download_name(prompt, str(self.meta.get("model") or ""), day, ext)

    def settings_dict(self) -> dict:
        return asdict(self.settings)


class _Finished:
    """What a session keeps of a finished engine run: its timing, not its steps."""

    finished, state = True, "done"

    def __init__(self, live):
        self._ms = live.ms_per_token()
        self.steps, self.offsets, self.notices = live.steps, live.offsets, list(live.notices)

    def ms_per_token(self):
        return self._ms
