"""GraphSnapshot + positions + labels → a Plotly 3D figure as a plain dict (and JSON bytes).

Worked example::

    snap = graph.snapshot(max_nodes=300)
    pos = layout.update([n.index for n in snap.nodes],
                        [(e.source, e.target, e.weight) for e in snap.edges])
    fig = figure_dict(snap, pos, {7124: "mentions of France"})
    [t["name"] for t in fig["data"]]
    # ['edges weak', 'edges mid', 'edges strong', 'features', 'active']
    fig["layout"]["scene"]["annotations"]   # the newest token's strongest features, named
    fig["data"][3]["customdata"]   # [7124, ...] feature index per point (for clicks)
    figure_json(snap, pos, labels)  # b'{"data":[...' via orjson, ~1 ms

Why a dict and not ``go.Figure``: validating a Figure costs ~26 ms per frame,
building this dict ~1 ms. Edges are split into three strength buckets (weak,
mid, strong: thin/faint to thick/bright), segments separated by ``None``.
Nodes: size grows with sqrt(current activation) from a floor; colour is the
current activation on a dark-to-bright scale fixed by the snapshot's largest
peak; features firing on the latest token get a ring (the ``active`` trace,
which also carries ``customdata``) and the strongest eight of them their
labels as scene text (``layout.scene.annotations``, each ``name`` the feature index). Labels are untrusted: hover and
scene text are made inert (:func:`plotly_text`), because Plotly renders a
subset of HTML in them.
Coordinates are rounded to 3 decimals; ``uirevision`` is constant so the
camera survives updates.
"""

from __future__ import annotations

import math
from functools import lru_cache
from itertools import repeat
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from .features import key_name
from .graph import GraphSnapshot, LabelSource, label_fn

BACKGROUND = "#0b0f19"
COLORSCALE = [[0.0, "#1b1f3a"], [0.25, "#3b3f8f"], [0.5, "#b0399a"],
              [0.75, "#ff7b3a"], [1.0, "#fff3b0"]]
EDGE_STYLES = (  # (name, width, rgba) from weak to strong
    ("edges weak", 1.0, "rgba(140,160,255,0.12)"),
    ("edges mid", 2.0, "rgba(160,180,255,0.30)"),
    ("edges strong", 3.5, "rgba(200,215,255,0.60)"),
)
NEGATIVE_EDGE_STYLES = (  # signed edges (virtual weights, measured effects) below zero
    ("edges negative weak", 1.0, "rgba(255,110,110,0.18)"),
    ("edges negative mid", 2.0, "rgba(255,110,110,0.40)"),
    ("edges negative strong", 3.5, "rgba(255,130,130,0.75)"),
)
PLANE_COLOUR = "rgba(125,249,255,0.18)"
ACTIVE_RING = "#7df9ff"
MAX_LABEL = 120  # characters of a label shown on hover
SCENE_LABELS = 8  # features of the newest token named in the scene
SCENE_LABEL_CHARS = 28  # characters of a label written in the scene
SCENE_LABEL_COLOUR = "#fff3b0"
# The opening camera: closer than Plotly's default (1.25, 1.25, 1.25), so the graph
# fills its canvas; scene names are placed for the view from here.
OPENING_EYE = (0.95, 0.95, 0.7)


@lru_cache(maxsize=8192)
def plotly_text(label: str, max_len: int = MAX_LABEL) -> str:
    """One line of untrusted label text, shortened, made inert for Plotly.

    Plotly draws a subset of HTML in hover and scene text (``<b>``, ``<a href>``,
    ``<br>``…) and decodes only a few entities (``&lt; &gt; &amp;`` and numeric
    ones, not ``&quot;``): so ``&``, ``<`` and ``>`` are escaped, which leaves no
    tag to parse, and quotes stay as they are (they would show as ``&quot;``)."""
    text = " ".join(str(label).split())
    if len(text) > max_len:
        text = text[: max_len - 1] + "…"
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def hover_label(label: str) -> str:
    """A label for hover text (see :func:`plotly_text`)."""
    return plotly_text(label)


@lru_cache(maxsize=8192)
def _hover_head(label: str, key: int) -> str:
    """The part of a node's hover text that changes only with its label."""
    return f"{hover_label(label)}<br>{key_name(key)} · now "


def _axis() -> dict:
    return {"visible": False, "showbackground": False, "showgrid": False,
            "zeroline": False, "showticklabels": False, "title": {"text": ""}}


def _extent(coords: np.ndarray) -> float:
    """Half-width of the fixed, cube-shaped scene: the layout's extent plus a margin,
    rounded up to a step of 0.5 so the view only changes when the graph outgrows it."""
    finite = np.abs(coords[np.isfinite(coords)])
    reach = float(finite.max()) if finite.size else 1.0
    return max(1.0, math.ceil(reach * 1.1 * 2.0) / 2.0)


def _screen_axes(eye: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors of the screen's right and up, in scene coordinates, for a
    camera at ``eye`` looking at the origin with z up.

    >>> [round(float(v), 3) for v in _screen_axes((1.0, 1.0, 0.0))[0]]
    [-0.707, 0.707, 0.0]
    """
    ahead = -np.asarray(eye, np.float64) / np.linalg.norm(eye)
    right = np.cross(ahead, (0.0, 0.0, 1.0))
    right /= np.linalg.norm(right)
    return right, np.cross(right, ahead)


SCREEN_RIGHT, SCREEN_UP = _screen_axes(OPENING_EYE)


def _label_side(point: np.ndarray, k: int, half: float) -> str:
    """Which side of its node the k-th scene name goes, at the opening camera: a
    node right of the middle (over a tenth of the scene's half-width on screen,
    half·√2 along the diagonal) is named on its left, and the other way round;
    near the middle they alternate (left first).

    >>> _label_side(np.array([-5.0, 5.0, 0.0]), 0, 10.0), _label_side(np.array([5.0, -5.0, 0.0]), 0, 10.0)
    ('left', 'right')
    """
    across = float(point @ SCREEN_RIGHT) / (half * math.sqrt(2.0))
    if abs(across) > 0.1:
        return "left" if across > 0 else "right"
    return "right" if k % 2 else "left"


def _segments(coords: np.ndarray, ends: np.ndarray) -> list[list]:
    """x, y, z lists of line segments between rows ``ends[:, 0]`` and ``ends[:, 1]``,
    each followed by a gap (None)."""
    seg = coords[ends]  # edge, end, axis
    axes = []
    for c in range(3):
        flat = np.zeros((len(seg), 3))
        flat[:, :2] = seg[:, :, c]
        values = flat.ravel().tolist()
        values[2::3] = [None] * len(seg)
        axes.append(values)
    return axes


def _edge_traces(ends: np.ndarray, weight: np.ndarray, coords: np.ndarray,
                 styles=EDGE_STYLES, top: float | None = None) -> list[dict]:
    """Three line traces, weak/mid/strong (thirds of ``top``, default the strongest weight)."""
    if top is None:
        top = max(float(weight.max()), 1e-12) if len(weight) else 1.0
    bucket = np.minimum(2, (3.0 * weight / top).astype(int))
    traces = []
    for b, (name, width, colour) in enumerate(styles):
        x, y, z = _segments(coords, ends[bucket == b])
        traces.append({
            "type": "scatter3d", "mode": "lines", "name": name, "x": x, "y": y, "z": z,
            "line": {"width": width, "color": colour}, "hoverinfo": "skip", "showlegend": False,
        })
    return traces


def _positions(positions: Mapping[Hashable, tuple], ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(rows of ``ids`` that have a position, their coordinates rounded to 3 decimals)."""
    have = np.fromiter((i in positions for i in ids), bool, len(ids))
    rows = np.flatnonzero(have)
    coords = np.array([positions[ids[r]] for r in rows.tolist()], dtype=np.float64).reshape(-1, 3)
    return rows, np.round(coords, 3)


@dataclass(frozen=True)
class Scene:
    """What one frame draws, before it becomes Plotly traces (:func:`figure_dict`)
    or a delta for the page's graph player (:mod:`axon_core.deltas`).

    Rows are the snapshot's nodes that have a position, in snapshot order:
    ``ids`` (node keys), ``coords`` (rounded to 3 decimals), ``act`` (brightness
    now, ≥ 0), ``peak``, ``tokens``; ``ring`` the rows firing on the snapshot's
    token; ``named`` the rows named in the scene, with each name's offset
    ``(row, ax, ay)``; ``edge_rows`` (rows of both ends) with their ``edge_bucket``
    (0 weak, 1 mid, 2 strong; 3–5 the same below zero, for signed kinds) and
    ``edge_weight``; ``half`` the cube's half-width; ``planes`` ``{z: name}``."""

    ids: list[int]
    coords: np.ndarray
    act: np.ndarray
    peak: np.ndarray
    tokens: np.ndarray
    ring: list[int]
    named: list[tuple[int, int, int]]
    edge_rows: np.ndarray
    edge_bucket: np.ndarray
    edge_weight: np.ndarray
    half: float
    planes: dict


def scene_of(snapshot: GraphSnapshot, positions: Mapping[Hashable, tuple],
             edges: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
             n_labels: int = SCENE_LABELS, signed: bool = False,
             planes: Mapping[float, str] | None = None) -> Scene:
    """The :class:`Scene` of one frame (arguments as :func:`figure_dict`'s)."""
    all_ids = snapshot.ids.tolist()
    rows, coords = _positions(positions, all_ids)
    ids = [all_ids[r] for r in rows.tolist()]
    act = np.maximum(snapshot.activation[rows], 0.0)
    ring = snapshot.active
    on = [r for r, i in enumerate(ids) if i in ring]
    strength = snapshot.latest[rows]
    named = sorted(on, key=lambda r: (-float(strength[r]), ids[r]))[:n_labels]
    # The newest token's features sit close together (a new node is placed beside
    # its strongest neighbour), so their names fan out on leader lines instead of
    # stacking on one spot: toward the middle of the opening view for nodes off to
    # one side (a name pointing outward is cut at the canvas edge in a small
    # embed), else alternately left and right.
    half = _extent(coords)
    sides = {r: _label_side(coords[r], k, half) for k, r in enumerate(named)}
    # each side's names stack top to bottom in the order their nodes do on screen
    # (at the opening camera), so no two names of one side land on each other
    rank = {r: i for side in ("left", "right")
            for i, r in enumerate(sorted((r for r in named if sides[r] == side),
                                         key=lambda r: -float(coords[r] @ SCREEN_UP)))}
    offsets = [(r, 70 if sides[r] == "right" else -70, -78 + 22 * rank[r]) for r in named]
    row = {i: r for r, i in enumerate(ids)}
    if edges is None:
        edges = (snapshot.edge_a, snapshot.edge_b, snapshot.edge_weight)
    src, dst, weight = edges
    ends = np.empty((len(src), 2), dtype=np.intp)
    ends[:, 0] = np.fromiter(map(row.get, np.asarray(src).tolist(), repeat(-1)), np.intp, len(src))
    ends[:, 1] = np.fromiter(map(row.get, np.asarray(dst).tolist(), repeat(-1)), np.intp, len(src))
    placed = (ends >= 0).all(axis=1)
    weight = np.asarray(weight, np.float64)[placed]
    ends = ends[placed]
    top = max(float(np.abs(weight).max()), 1e-12) if len(weight) else 1.0
    bucket = np.minimum(2, (3.0 * np.abs(weight) / top).astype(int))
    if signed:
        bucket = np.where(weight < 0, bucket + 3, bucket)
    return Scene(ids, coords, act, snapshot.peak[rows], snapshot.tokens[rows], on, offsets, ends, bucket, weight,
                 half, dict(planes or {}))


def figure_dict(snapshot: GraphSnapshot, positions: Mapping[Hashable, tuple], label_of: LabelSource,
                edges: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                n_labels: int = SCENE_LABELS, signed: bool = False,
                planes: Mapping[float, str] | None = None, scene: Scene | None = None) -> dict[str, Any]:
    """The Plotly figure (``{"data": [...], "layout": {...}}``) for one frame.

    ``edges`` (source ids, target ids, weights) replaces the snapshot's own;
    with ``signed``, weights below zero are drawn in red (by size, as the
    others). ``planes`` (``{z: name}``, a run of several layers) outlines each
    layer's plane and names it. The snapshot's token's features are ringed,
    and the ``n_labels`` strongest of them carry their labels as text in the
    scene. Nodes without a position are left out. ``scene``: the frame's
    :class:`Scene`, where already computed (the other arguments but ``label_of``
    are then not read).

    Traces, in order: three edge strengths, ``features``, ``active``, three
    strengths of negative edges (empty unless ``signed``), ``planes``."""
    label = label_fn(label_of)
    if scene is None:
        scene = scene_of(snapshot, positions, edges, n_labels, signed, planes)
    ids, coords, act, half = scene.ids, scene.coords, scene.act, scene.half
    peak, tokens = scene.peak, scene.tokens
    peak_top = float(peak.max()) if len(peak) else 1.0
    size = np.round(np.minimum(4.0 + 5.0 * np.sqrt(act), 30.0), 1)
    hover = [f"{_hover_head(label(i), i)}{a:.2f} · peak {p:.2f} · {t} tok"
             for i, a, p, t in zip(ids, act.tolist(), peak.tolist(), tokens.tolist())]
    node_trace = {
        "type": "scatter3d", "mode": "markers", "name": "features",
        "x": coords[:, 0].tolist(), "y": coords[:, 1].tolist(), "z": coords[:, 2].tolist(),
        "customdata": ids, "hovertext": hover, "hoverinfo": "text",
        "marker": {"size": size.tolist(), "color": np.round(act, 2).tolist(),
                   "colorscale": COLORSCALE, "cmin": 0.0, "cmax": round(peak_top or 1.0, 2),
                   "opacity": 0.95, "line": {"width": 0}},
        "showlegend": False,
    }
    on = scene.ring
    active_trace = {
        "type": "scatter3d", "mode": "markers", "name": "active",
        "x": coords[on, 0].tolist(), "y": coords[on, 1].tolist(), "z": coords[on, 2].tolist(),
        "customdata": [ids[r] for r in on], "hovertext": [hover[r] for r in on],
        "hoverinfo": "text",
        "marker": {"size": (size[on] + 6.0).tolist(), "symbol": "circle-open",
                   "color": ACTIVE_RING, "line": {"width": 2, "color": ACTIVE_RING}},
        "showlegend": False,
    }
    # The ringed token's strongest features, named in the scene: scene annotations
    # (SVG text pinned to 3D points), not a WebGL text trace, whose glyph meshes
    # cost ~200 ms a frame to rebuild in a software-rendered browser.
    annotations = []
    for r, ax, ay in scene.named:
        annotations.append({
            "x": float(coords[r, 0]), "y": float(coords[r, 1]), "z": float(coords[r, 2]),
            "text": plotly_text(label(ids[r]) or key_name(ids[r]), SCENE_LABEL_CHARS), "name": str(ids[r]),
            "showarrow": True, "arrowhead": 0, "arrowwidth": 1, "arrowcolor": "rgba(255,243,176,0.45)",
            "ax": ax, "ay": ay,
            "xanchor": "left" if ax > 0 else "right", "font": {"color": SCENE_LABEL_COLOUR, "size": 12},
            "bgcolor": "rgba(11,15,25,0.7)",
        })
    plane_trace = {"type": "scatter3d", "mode": "lines", "name": "planes", "x": [], "y": [], "z": [],
                   "line": {"width": 1.5, "color": PLANE_COLOUR}, "hoverinfo": "skip", "showlegend": False}
    for z, name in sorted(scene.planes.items()):
        corners = [(-half, -half), (half, -half), (half, half), (-half, half), (-half, -half)]
        plane_trace["x"] += [c[0] for c in corners] + [None]
        plane_trace["y"] += [c[1] for c in corners] + [None]
        plane_trace["z"] += [round(float(z), 3)] * 5 + [None]
        # on the plane's edge on the left of the opening camera's view
        annotations.append({"x": half, "y": -0.4 * half, "z": round(float(z), 3), "text": plotly_text(name, 40),
                            "name": f"plane {name}", "showarrow": False, "xanchor": "left", "yshift": 9,
                            "font": {"color": ACTIVE_RING, "size": 11}})
    axis_range = [-half, half]
    layout_scene = {name: {**_axis(), "range": axis_range} for name in ("xaxis", "yaxis", "zaxis")}
    # once a person moves the camera, uirevision keeps theirs
    layout_scene.update(aspectmode="cube", bgcolor=BACKGROUND, uirevision="axon",
                        dragmode="orbit", hovermode="closest", annotations=annotations,
                        camera={"eye": dict(zip("xyz", OPENING_EYE))})
    layout = {
        "paper_bgcolor": BACKGROUND, "plot_bgcolor": BACKGROUND,
        "font": {"color": "#d8dcf0"}, "margin": {"l": 0, "r": 0, "t": 0, "b": 0},
        "showlegend": False, "uirevision": "axon", "hovermode": "closest",
        "hoverlabel": {"bgcolor": "#1b1f3a", "font": {"color": "#ffffff"}},
        "transition": {"duration": 0}, "scene": layout_scene,
    }
    ends, weight, bucket = scene.edge_rows, scene.edge_weight, scene.edge_bucket
    top = max(float(np.abs(weight).max()), 1e-12) if len(weight) else 1.0
    negative = bucket >= 3
    return {"data": [*_edge_traces(ends[~negative], np.abs(weight[~negative]), coords, top=top),
                     node_trace, active_trace,
                     *_edge_traces(ends[negative], -weight[negative], coords, NEGATIVE_EDGE_STYLES, top=top),
                     plane_trace],
            "layout": layout}


def _default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def to_json(figure: Mapping[str, Any]) -> bytes:
    """A figure dict as JSON bytes (numpy scalars and arrays converted)."""
    return orjson.dumps(figure, default=_default, option=orjson.OPT_SERIALIZE_NUMPY)


def figure_json(snapshot: GraphSnapshot, positions: Mapping[Hashable, tuple],
                label_of: LabelSource) -> bytes:
    """:func:`figure_dict` serialised with orjson."""
    return to_json(figure_dict(snapshot, positions, label_of))
