"""A run JSON → one self-contained HTML page that plays the run back, token by token.

Worked example::

    run = orjson.loads(Path("axon-run.json").read_bytes())   # schema axon-run/1 or /2
    data = replay_data(run)
    len(data["frames"]) == len(run["tokens"])                  # one delta per token
    data["frames"][0]["n"][0]    # ['#7124', 'mentions of France', None, 812, -1204, 330]
    page = replay_html(run)                  # one self-contained page (~100 KB for 50 tokens)
    page = replay_html(run, small=True)      # the very same bytes (the flag is kept for old callers)

    python -m axon_core.export replay axon-run.json -o run.html --small

The page needs no server, no model and no library (it works from ``file://``
and loads nothing from elsewhere): the browser-side graph player
``assets/player.js`` (the same player the live view feeds from a stream)
applies the run's *deltas*, one per token, and draws them with its own
canvas-2D renderer (``renderer: "canvas"``: a perspective camera, orbit by
drag, zoom by wheel or pinch, hover and names from its own projection; the
live page still draws with Plotly); ``seek(k)`` rebuilds the state after
token k from the deltas before it.

Flavours: there used to be two, *offline* (plotly.js inlined, ≈ 4.9 MB) and
*small* (plotly.js from a CDN). Without plotly.js both are the same small,
self-contained page; ``small=True`` and ``--small`` are still accepted and
change nothing, so the app's download and the command line stay byte-identical.

What a delta holds (see the top of ``assets/player.js`` for the player's side):
``p`` the token position; ``t`` the token's text as shown, ``pr`` 1 for a prompt
token, ``pb`` its probability; ``n`` nodes new to the state
``[name, label, layer, x, y, z]`` (x, y, z in thousandths; trailing nulls left
out: no x for a feature that is not drawn because the live view's 300-node cap
left it out, a null label for the fallback "Feature N");
``f`` the features firing on this token, flat ``[node, activation·100, ...]``
(every feature of the run JSON's token, in its order); ``e`` edges added or
restyled, flat ``[a, b, strength 0-2, ...]``; ``r`` edges removed, flat
``[a, b, ...]``; ``s`` the scene names ``[[node, ax, ay], ...]``; ``h`` the
scene's half-width when it changes. Nodes are numbered in order of arrival.

A run JSON that carries a fork (``"fork"``, written by the app when a fork was
shown beside the run) adds ``data["fork"]`` (:func:`fork_data`): the page shows
both continuations from the fork point, side by side under the text, with a
link that reopens the fork live; the fork's token in the text is marked and
jumps the player there. Without it (older files, runs never forked) nothing changes.

Where the nodes are: the live view lays out at its own frame cadence and,
when scrubbed, freezes the positions of its last layout; the run JSON records
those (``"layout"``, see :meth:`RunSession.layout_json`), and the replay draws
every token's state exactly as the live view shows it scrubbed to that token
(same nodes, edges, rings and names, computed by the same functions). A run
JSON without ``"layout"`` (older files) is laid out here once, deterministically.

Text and labels are untrusted: the data is JSON inside ``<script
type="application/json">`` with ``<``, ``>``, ``&`` escaped, the page sets
text with ``textContent`` (the names, the hover tooltip, the text).
"""

from __future__ import annotations

import html
import math
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .edges import score_edge_columns
from .export import fork_from_json, json_for_script, run_from_json
from .features import key_name, node_key, split_key
from .figure import (ACTIVE_RING, BACKGROUND, COLORSCALE, EDGE_STYLES, OPENING_EYE, PLANE_COLOUR,
                     SCENE_LABEL_CHARS, SCENE_LABEL_COLOUR, figure_dict)
from .graph import GraphState
from .labels import fallback_label
from .layout import ForceLayout
from .session import PLANE_GAP
from .share import RunRequest, base_url_for, build_link

Q_POS = 1000  # positions are sent in thousandths (the figure rounds them to 3 decimals)
Q_ACT = 100  # activations in hundredths
DEFAULT_MS = 80.0  # pace of a run that recorded none (ms per generated token)
PROMPT_MS = 40.0  # prompt tokens appear faster than generated ones, as they do live
ASSETS = Path(__file__).resolve().parent.parent / "assets"


def _json_key(key: int) -> str:
    """A node as the run JSON's ``labels`` write it: ``"7124"`` or ``"8:7124"``."""
    layer, index = split_key(key)
    return str(index) if layer is None else f"{layer}:{index}"


def _from_json_key(name: str) -> int:
    if ":" in name:
        layer, index = name.split(":", 1)
        return node_key(int(layer), int(index))
    return int(name)


def _planes(meta: Mapping[str, Any], layered: bool) -> dict[int, float]:
    """Each layer's plane z, as :class:`RunSession` places them."""
    layers = sorted({int(s["layer"]) for s in meta.get("saes") or () if s.get("layer") is not None})
    if not layered or len(layers) < 2:
        return {}
    return {layer: (r - (len(layers) - 1) / 2) * PLANE_GAP for r, layer in enumerate(layers)}


def _positions(run: Mapping[str, Any], graph: GraphState, plane_of: dict[int, float]) -> dict[int, tuple]:
    """The recorded layout, or (older files) one deterministic layout of the whole run."""
    recorded = (run.get("layout") or {}).get("positions")
    if recorded is not None:
        return {_from_json_key(k): tuple(float(v) for v in xyz) for k, xyz in recorded.items()}
    max_nodes = int((run.get("layout") or {}).get("max_nodes", 300))
    snap = graph.snapshot(max_nodes=max_nodes)
    planes = None
    if plane_of:
        planes = np.array([plane_of.get(split_key(k)[0], np.nan) for k in snap.ids.tolist()])
    layout = ForceLayout(seed=0)
    layout.update_arrays(snap.ids, snap.edge_a, snap.edge_b, snap.edge_weight, planes)
    return {k: tuple(round(v, 3) for v in xyz) for k, xyz in layout.positions.items()}


def replay_link(run: Mapping[str, Any], app_url: str | None = None, fork: tuple[int, int] | None = None) -> str:
    """The live app's share link that reruns this run (prompt, model, SAE, settings, layers),
    and with ``fork`` (position, token id) forks it there once it is done."""
    steps, settings, meta = run_from_json(dict(run))
    prompt = meta.get("prompt")
    if not isinstance(prompt, str):
        prompt = "".join(s.text for s in steps if s.is_prompt)
    layers = tuple(sorted({int(s["layer"]) for s in meta.get("saes") or () if s.get("layer") is not None}))
    steer = tuple((int(i), float(c)) for i, c in meta.get("steer") or ())
    req = RunRequest(prompt=prompt, model=meta.get("model"), release=meta.get("release"),
                     sae_id=meta.get("sae_id"), settings=settings, autorun=True, steer=steer,
                     layers=layers if len(layers) > 1 else (), fork=fork)
    return build_link(app_url or base_url_for(os.environ.get("SPACE_ID"), None), req)


def replay_data(run: Mapping[str, Any], app_url: str | None = None) -> dict[str, Any]:
    """Everything the page shows: the run's description and one delta per token."""
    steps, settings, meta = run_from_json(dict(run))
    labels: Mapping[str, str] = run.get("labels") or {}
    layered = any(f.layer is not None for s in steps for f in s.features)
    plane_of = _planes(meta, layered)

    def label(key: int) -> str:
        return str(labels.get(_json_key(key), fallback_label(split_key(key)[1])))

    graph = GraphState()
    for s in steps:
        graph.add_step(s)
    positions = _positions(run, graph, plane_of)
    plane_names = {z: f"layer {layer}" for layer, z in plane_of.items()}

    ref: dict[int, int] = {}  # node key → node number in the player
    prev_edges: dict[tuple[int, int], int] = {}
    prev_half = None
    frames = []
    for s in steps:
        frame: dict[str, Any] = {"p": s.position, "t": s.shown}
        if s.is_prompt:
            frame["pr"] = 1
        if s.prob is not None:
            frame["pb"] = round(float(s.prob), 4)
        new = []
        for f in s.features:
            if f.key not in ref:
                ref[f.key] = len(ref)
                layer, _ = split_key(f.key)
                xyz = positions.get(f.key)
                text = label(f.key)
                node = [key_name(f.key), None if text == fallback_label(split_key(f.key)[1]) else text, layer]
                if xyz is not None:
                    node += [int(round(v * Q_POS)) for v in xyz]
                while node[-1] is None:  # [name] alone: a feature never drawn, with its number as label
                    node.pop()
                new.append(node)
        if new:
            frame["n"] = new
        frame["f"] = [x for f in s.features for x in (ref[f.key], int(round(f.activation * Q_ACT)))]

        # the live view scrubbed to this token (RunSession.figure with ``at`` set)
        snap = graph.snapshot_at(s.position, among=positions)
        a, b, score, _ = score_edge_columns(graph, snap, "npmi")
        fig = figure_dict(snap, positions, _no_label, edges=(a, b, score), planes=plane_names or None)
        drawn = set(fig["data"][3]["customdata"])
        edges = _buckets(a, b, score, drawn)
        cur = {(ref[x], ref[y]): k for (x, y), k in edges.items()}
        changed = [v for (x, y), k in cur.items() if prev_edges.get((x, y)) != k for v in (x, y, k)]
        gone = [v for xy in prev_edges if xy not in cur for v in xy]
        if changed:
            frame["e"] = changed
        if gone:
            frame["r"] = gone
        prev_edges = cur
        names = [a for a in fig["layout"]["scene"]["annotations"] if not a["name"].startswith("plane ")]
        frame["s"] = [[ref[int(a["name"])], a["ax"], a["ay"]] for a in names]
        half = fig["layout"]["scene"]["xaxis"]["range"][1]
        if half != prev_half:
            frame["h"] = half
            prev_half = half
        frames.append(frame)

    ms = meta.get("ms_per_token")
    ms = float(ms) if isinstance(ms, (int, float)) and math.isfinite(ms) and ms > 0 else DEFAULT_MS
    prompt = meta.get("prompt")
    if not isinstance(prompt, str):
        prompt = "".join(s.text for s in steps if s.is_prompt)
    out = {
        "v": 1,
        "meta": {
            "schema": run.get("schema"), "prompt": prompt, "model": meta.get("model"),
            "release": meta.get("release"), "sae_id": meta.get("sae_id"),
            "saes": [f"{s.get('release')} / {s.get('sae_id')}" for s in meta.get("saes") or ()],
            "settings": run.get("settings") or {}, "steer": meta.get("steer") or [],
            "ms_per_token": round(ms, 1), "prompt_ms": PROMPT_MS, "link": replay_link(run, app_url),
        },
        "q": Q_POS, "qa": Q_ACT, "decay": graph.decay,
        "planes": [[round(float(z), 3), name] for z, name in sorted(plane_names.items())],
        "style": {
            "background": BACKGROUND, "colorscale": COLORSCALE, "edges": EDGE_STYLES, "ring": ACTIVE_RING,
            "plane": PLANE_COLOUR, "name": SCENE_LABEL_COLOUR, "name_chars": SCENE_LABEL_CHARS,
            "eye": dict(zip("xyz", OPENING_EYE)),
        },
        "frames": frames,
    }
    fork = fork_data(run, steps, app_url)
    if fork is not None:
        out["fork"] = fork
    return out


def fork_data(run: Mapping[str, Any], steps, app_url: str | None = None) -> dict[str, Any] | None:
    """What the page shows of the fork a run JSON carries (``"fork"``, see
    :func:`~axon_core.export.fork_json`), or None: ``p`` the fork point, ``k`` its
    frame (the run's token there), ``t`` the forced token, ``was`` the run's,
    ``run`` and ``fork`` the two texts from there (as shown), ``link`` the share
    link that reopens the fork live. Untrusted text, like the rest."""
    found = fork_from_json(dict(run))
    if found is None:
        return None
    fork, own = found
    k = next((i for i, s in enumerate(steps) if s.position == fork.position), len(steps) - 1)
    was = next((s.shown for s in steps if s.position == fork.position), "")
    return {"p": fork.position, "k": k, "t": own[0].shown if own else "", "was": was,
            "run": "".join(s.shown for s in steps if s.position >= fork.position),
            "fork": "".join(s.shown for s in own),
            "link": replay_link(run, app_url, fork=fork.as_tuple())}


def _no_label(key: int) -> str:
    """Labels for figure_dict where only the names' places are read (the player writes the text)."""
    return ""


def _buckets(a: np.ndarray, b: np.ndarray, score: np.ndarray, drawn: set[int]) -> dict[tuple[int, int], int]:
    """Each drawn edge's strength bucket (0 weak … 2 strong), as ``figure_dict`` splits them:
    thirds of the strongest edge among drawn nodes."""
    keep = [i for i, (x, y) in enumerate(zip(a.tolist(), b.tolist())) if x in drawn and y in drawn]
    if not keep:
        return {}
    w = np.abs(np.asarray(score, np.float64)[keep])
    top = max(float(w.max()), 1e-12)
    bucket = np.minimum(2, (3.0 * w / top).astype(int)).tolist()
    return {(int(a[i]), int(b[i])): k for i, k in zip(keep, bucket)}


@lru_cache(maxsize=4)
def _asset(name: str) -> str:
    text = (ASSETS / name).read_text(encoding="utf-8")
    assert "</script" not in text.lower(), name
    return text


def replay_html(run: Mapping[str, Any], small: bool = False, app_url: str | None = None) -> str:
    """The replay page of ``run`` (a run JSON dict), as one string: self-contained (no
    plotly.js, nothing loaded from elsewhere). ``small`` is accepted for old callers and
    changes nothing (both flavours are this page). Same run, same page."""
    del small
    data = replay_data(run, app_url)
    meta = data["meta"]
    title = f"AXON replay · {meta.get('prompt') or ''}"[:120]
    return _PAGE.format(title=html.escape(title), css=_asset("replay.css"),
                        data=json_for_script(data), player=_asset("player.js"), page=_asset("replay.js"))


def write_replay(run_path: str | os.PathLike, out_path: str | os.PathLike, small: bool = False,
                 app_url: str | None = None) -> int:
    """Read a run JSON file, write its replay page; returns the page's size in bytes."""
    import orjson

    run = orjson.loads(Path(run_path).read_bytes())
    page = replay_html(run, small=small, app_url=app_url).encode("utf-8")
    Path(out_path).write_bytes(page)
    return len(page)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style></head>
<body>
<header id="head"><div id="title"></div><div id="meta"></div><a id="live" target="_blank" rel="noopener">open live</a></header>
<div id="text" aria-live="polite"></div>
<div id="fork" hidden></div>
<div id="graph"></div>
<div id="controls">
<button id="play" type="button">Play</button>
<select id="speed" aria-label="speed"><option value="0.5">0.5×</option><option value="1" selected>1×</option><option value="2">2×</option><option value="4">4×</option></select>
<input id="slider" type="range" min="0" max="0" value="0" aria-label="token">
<span id="where"></span>
</div>
<script type="application/json" id="axon-replay">{data}</script>
<script>{player}</script>
<script>{page}</script>
</body></html>
"""


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m axon_core.export replay RUN.json -o run.html [--small] [--app-url URL]``."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m axon_core.export",
                                     description="Turn an exported AXON run JSON into a replay page.")
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("replay", help="write one self-contained page that plays the run back")
    rep.add_argument("run", help="a run JSON file (schema axon-run/1 or axon-run/2)")
    rep.add_argument("-o", "--out", required=True, help="the HTML page to write")
    rep.add_argument("--small", action="store_true",
                     help="accepted for old scripts; the page is the same (it needs no plotly.js)")
    rep.add_argument("--app-url", default=None,
                     help="the live app the page links back to (default: this Space, or http://127.0.0.1:7860/)")
    args = parser.parse_args(argv)

    try:
        size = write_replay(args.run, args.out, small=args.small, app_url=args.app_url)
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"error: cannot replay {args.run}: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":  # also what ``python -m axon_core.export replay …`` runs
    raise SystemExit(main())
