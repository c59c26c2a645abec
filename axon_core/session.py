"""One browser session's run: steps → graph → layout → figure, tables and exports.

All state of what one person sees lives in a :class:`RunSession`; the app keeps
one per browser session (``gr.State``), so two sessions never share a graph.
Labels come from a process-wide :class:`~axon_core.labels.LabelService` and are
only ever *looked up* here (never awaited): a frame shows what is known.

Worked example::

    run = RunSession(meta={"model": "gpt2-small", "release": "gpt2-small-res-jb",
                           "sae_id": "blocks.8.hook_resid_pre",
                           "neuronpedia_id": "gpt2-small/8-res-jb"},
                     settings=GenerationSettings(), labels=None)
    for step in generate(pair, "The capital of France is", run.settings):
        run.add(step)
        if run.frame_due():
            payload = run.figure_json()      # str: a Plotly figure as JSON
    run.table()[0]   # {'feature': 1234, 'label': 'Feature 1234', 'activation': 5.1, ...}
"""

from __future__ import annotations

import html
import threading
import time
from dataclasses import asdict, replace
from typing import Any

from .edges import npmi_neighbours, score_edges
from .export import run_to_json, standalone_html
from .figure import figure_dict, to_json
from .generation import GenerationSettings, TokenStep
from .graph import EdgeView, GraphState
from .labels import fallback_label
from .layout import ForceLayout
from .steering import compare_runs
from .timeline import timeline_figure

NEURONPEDIA_PAGE = "https://www.neuronpedia.org/{np_id}/{index}"


def token_span(step: TokenStep, extra_class: str = "", attrs: str = "") -> str:
    """One token of a text as an HTML span (escaped; newlines shown as ↵)."""
    cls = ("tok prompt" if step.is_prompt else "tok gen") + (f" {extra_class}" if extra_class else "")
    text = html.escape(step.text).replace("\n", "↵<br>")
    return f'<span class="{cls}"{attrs}>{text}</span>'


class RunSession:
    """The steps of one run and everything derived from them."""

    def __init__(
        self,
        meta: dict[str, Any],
        settings: GenerationSettings,
        labels=None,
        frame_interval: float = 0.2,
        max_nodes: int = 300,
        w_dec=None,
        edge_kind: str = "npmi",
    ):
        self.meta, self.settings, self.labels = dict(meta), settings, labels
        self.np_id: str | None = meta.get("neuronpedia_id")
        self.frame_interval, self.max_nodes = frame_interval, max_nodes
        self.w_dec, self.edge_kind = w_dec, edge_kind  # edge_kind: see edges.EDGE_KINDS
        self.highlight: int | None = None  # a token position whose features the graph rings
        self.graph = GraphState()
        self.layout = ForceLayout(seed=0)
        self.steps: list[TokenStep] = []
        self.step_seconds: list[float] = []  # wall time per generated token
        self.notices: list[str] = []
        self._last_frame = float("-inf")
        self._last_step_time: float | None = None
        self._figure: dict | None = None

    # ---- feeding ----------------------------------------------------------

    def add(self, step: TokenStep) -> None:
        now = time.perf_counter()
        if not step.is_prompt and self._last_step_time is not None:
            self.step_seconds.append(now - self._last_step_time)
        self._last_step_time = now
        self.steps.append(step)
        self.graph.add_step(step)
        if step.notice:
            self.notices.append(step.notice)
        if self.labels is not None and self.np_id:
            self.labels.request(self.np_id, [f.index for f in step.features])

    def frame_due(self, now: float | None = None) -> bool:
        """Whether enough time has passed to send another frame (throttling)."""
        now = time.perf_counter() if now is None else now
        if now - self._last_frame >= self.frame_interval:
            self._last_frame = now
            return True
        return False

    # ---- reading ----------------------------------------------------------

    def label(self, index: int) -> str:
        if self.labels is None:
            return fallback_label(index)
        return self.labels.label(self.np_id, index)

    def ms_per_token(self) -> float | None:
        s = sorted(self.step_seconds)
        return 1e3 * s[len(s) // 2] if s else None

    def figure(self, relayout: bool = True) -> dict:
        """The current frame's figure, laid out warm-started from the last one.

        Positions always follow co-firing strength (so switching the edge kind
        does not move nodes); the edges drawn are those of ``edge_kind``, and the
        ringed nodes are the latest token's features, or the highlighted token's.
        """
        snap = self.graph.snapshot(max_nodes=self.max_nodes)
        if relayout or not self.layout.positions:
            self.layout.update([n.index for n in snap.nodes], [(e.source, e.target, e.weight) for e in snap.edges])
        positions = self.layout.positions
        scored = score_edges(self.graph, snap, self.edge_kind, w_dec=self.w_dec)
        shift = 1.0 if self.edge_kind == "npmi_all" else 0.0  # NPMI in [-1, 1] → width in [0, 2]
        drawn = replace(
            snap,
            edges=tuple(EdgeView(e.source, e.target, e.count, e.score + shift) for e in scored),
            active=self.token_features(self.highlight) if self.highlight is not None else snap.active,
        )
        self._figure = figure_dict(drawn, positions, self.label)
        return self._figure

    def token_features(self, position: int) -> frozenset[int]:
        return frozenset(f.index for s in self.steps if s.position == position for f in s.features)

    def edge_counts(self) -> dict[str, int]:
        """How many co-firing pairs there are and how many the NPMI filter keeps."""
        snap = self.graph.snapshot(max_nodes=10**9, max_edges=10**9)
        kept = score_edges(self.graph, snap, "npmi", max_edges=10**9)
        return {"co_firing_pairs": len(self.graph.edges()), "npmi_kept": len(kept)}

    def timeline(self) -> dict:
        return timeline_figure(self.steps, self.label, highlight_position=self.highlight)

    def figure_json(self, relayout: bool = True) -> str:
        return to_json(self.figure(relayout)).decode()

    def text_html(self, highlight: int | None = None) -> str:
        """The text so far, one span per token; hovering shows its top features."""
        parts = []
        for s in self.steps:
            top = ", ".join(f"{self.label(f.index)} ({f.activation:.1f})" for f in s.features[:5])
            prob = f" · p={s.prob:.3f}" if s.prob is not None else ""
            title = html.escape(f"pos {s.position}{prob} · {top or 'no features'}", quote=True)
            lit = highlight is not None and any(f.index == highlight for f in s.features)
            parts.append(token_span(s, "lit" if lit else "", f' data-pos="{s.position}" title="{title}"'))
        return f'<div class="axon-text">{"".join(parts)}</div>'

    def table(self, n: int = 20) -> list[dict]:
        return self.graph.top_features_table(self.label, n=n)

    def inspector(self, index: int, tokenizer_decode=None) -> dict[str, Any] | None:
        """What the inspector shows for one feature, or None if it is not in this run."""
        if index not in self.graph:
            return None
        node = self.graph.node(index)
        decode = tokenizer_decode or (lambda t: f"#{t}")
        url = NEURONPEDIA_PAGE.format(np_id=self.np_id, index=index) if self.np_id else None
        return {
            "index": index,
            "label": self.label(index),
            "activation": node.activation,
            "peak": node.peak,
            "tokens": node.tokens,
            "history": list(node.history),
            "neighbours": [
                {"feature": j, "label": self.label(j), "npmi": v, "co_fired": c}
                for j, v, c in npmi_neighbours(self.graph, index)
            ],
            "pushes": [{"token": decode(t), "attribution": a} for t, a in self.graph.top_pushes(index)],
            "url": url,
        }

    # ---- exports ----------------------------------------------------------

    def export_json(self, versions: dict[str, str] | None = None) -> dict:
        meta = {**self.meta, "versions": versions or {}, "ms_per_token": self.ms_per_token()}
        return run_to_json(self.steps, self.settings, meta, self.graph, self.label)

    def export_html(self) -> str:
        fig = self._figure or self.figure()
        title = f"AXON · {self.meta.get('release', '')} / {self.meta.get('sae_id', '')}"
        return standalone_html(fig, title, "".join(s.text for s in self.steps))

    def settings_dict(self) -> dict:
        return asdict(self.settings)


def comparison_html(plain: RunSession, steered: RunSession) -> str:
    """Both texts side by side, the first diverging token marked, and what changed in the graph."""
    cmp = compare_runs(plain.steps, steered.steps)

    def text(run):
        return "".join(token_span(s, "diverge" if s.position == cmp.first_divergence else "")
                       for s in run.steps)

    def feats(rows):
        return ", ".join(f"#{i} {html.escape(plain.label(i))} ({d:+.1f})" for i, d in rows) or "none"

    where = ("identical texts" if cmp.first_divergence is None
             else f"first divergence at position {cmp.first_divergence} (after {cmp.shared_tokens} shared new tokens)")
    spec = ", ".join(f"#{f} {c:+.2f}" for f, c in steered.meta.get("steer", ()))
    return (f'<div class="axon-compare"><p><b>Steering</b> {html.escape(spec)} · {where}</p>'
            f'<div class="cols"><div><h4>plain</h4><div class="axon-text">{text(plain)}</div></div>'
            f'<div><h4>steered</h4><div class="axon-text">{text(steered)}</div></div></div>'
            f"<p>stronger when steered: {feats(cmp.gained)}<br>weaker: {feats(cmp.lost)}</p></div>")


class SessionRuns:
    """At most one generating run per browser session: a session's new run
    supersedes its previous one, which stops at its next frame. So one session
    never holds more than one of the queue's CONCURRENCY workers, and none holds
    it longer than MAX_RUN_SECONDS a run; QUEUE_SIZE bounds who waits."""

    def __init__(self):
        self._lock = threading.Lock()
        self._current: dict[str, object] = {}

    def start(self, key: str | None) -> object:
        ticket = object()
        if key:
            with self._lock:
                self._current[key] = ticket
        return ticket

    def superseded(self, key: str | None, ticket: object) -> bool:
        return bool(key) and self._current.get(key) is not ticket

    def finish(self, key: str | None, ticket: object) -> None:
        if key:
            with self._lock:
                if self._current.get(key) is ticket:
                    del self._current[key]

    def __len__(self) -> int:
        return len(self._current)
