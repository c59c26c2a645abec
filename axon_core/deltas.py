"""Scene → deltas for the page's graph player: each frame sends only what changed.

The live graph is drawn in the browser by the same player as the replay page
(``assets/player.js``; its header documents the delta format). This module is
the server side, one :class:`GraphStream` per viewer (a :class:`RunSession`
owns one): it remembers the player state it last sent (nodes by number, their
labels and positions as drawn, edges and their strengths, the scene names, the
cube), and turns each new frame into a delta relative to it.

What travels is a *log*: one string, a header line then one JSON delta per
line, that only ever grows during an epoch. The page's component (a
``gr.HTML`` value) receives the whole string, but Gradio streams a value that
extends the previous one as an ``append`` of the new part, so each frame costs
its new lines only. A value never loses a delta: a browser that missed some
values still finds every line in the newest one. A scrub, a new edge kind, or
any frame the log cannot describe as a change starts a new epoch (a new header,
then the full state), and the page resets its player.

Worked example::

    stream = GraphStream(decay=0.85)
    log = stream.update(steps, scene, label)        # header + one line per token + the frame's changes
    log2 = stream.update(steps2, scene2, label)     # log2.startswith(log): only the new lines are new
    len(log2) - len(log)                            # ~1-6 KB for a frame at 300 nodes
    state = PlayerState.of(log2)                    # what the player draws, decoded in Python (for tests)

Per token: ``p`` its position, ``n`` the features new to the state as
``[name, None, layer]`` (placed later by ``m``) and ``k`` their node keys
(what a click on one reports), ``f`` its features, flat
``[node, activation·qa, ...]``. Per frame (on the newest token's line):
``m`` newly drawn nodes, flat ``[node, x, y, z, ...]`` (thousandths); ``d``
drawn nodes that moved, flat ``[node, dx, dy, dz, ...]`` from the position last
sent (sent when a node moved more than about a pixel, every change on a run's
last frame: most nodes drift a little every frame, and a step is a third of the
bytes of a position); ``u`` nodes no longer drawn (the 300-node cap); ``l`` labels
``[[node, label], ...]`` of drawn nodes, when known or changed; ``e``/``r`` edges
added or restyled / removed; ``s`` the scene names; ``h`` the cube's half-width;
``w`` the watch list's nodes (marked in the scene; replaces the previous list).
"""

from __future__ import annotations

import secrets
from typing import Any, Callable, Iterable, Mapping, Sequence

import orjson

from .features import key_name, split_key
from .figure import (ACTIVE_RING, BACKGROUND, COLORSCALE, EDGE_STYLES, NEGATIVE_EDGE_STYLES, OPENING_EYE,
                     PLANE_COLOUR, SCENE_LABEL_CHARS, SCENE_LABEL_COLOUR, Scene)
from .labels import fallback_label

Q_POS = 1000  # positions in thousandths (the figure rounds them to 3 decimals)
Q_ACT = 100  # activations in hundredths
PIXELS = 700  # about the canvas's size in pixels: a move below 2·half/PIXELS is not seen
HEADER = "AXON-DELTAS/1"


def player_style() -> dict[str, Any]:
    """The player's colours, as the server-drawn figure uses them (six edge styles:
    weak, mid, strong, then the same below zero)."""
    return {"background": BACKGROUND, "colorscale": COLORSCALE, "edges": [*EDGE_STYLES, *NEGATIVE_EDGE_STYLES],
            "ring": ACTIVE_RING, "plane": PLANE_COLOUR, "name": SCENE_LABEL_COLOUR, "name_chars": SCENE_LABEL_CHARS,
            "eye": dict(zip("xyz", OPENING_EYE))}


def _dump(value: Any) -> str:
    return orjson.dumps(value).decode()


class GraphStream:
    """One viewer's graph, as a growing log of deltas (see the module doc).

    ``update(steps, scene, label, at=None, final=False)``: ``steps`` every step
    of the run so far (those not yet sent are sent), ``scene`` the frame's
    :class:`Scene`, ``label(key)`` a node's label, ``at`` the scrubbed token (the
    scene is the state at ``at``; steps after it are not sent), ``final`` a
    run's last frame (positions exact). Returns the log. ``restart()`` starts
    a new epoch (the next update sends the full state)."""

    def __init__(self, decay: float = 0.85, planes: Mapping[float, str] | None = None):
        self.decay = decay
        self.planes = [[round(float(z), 3), name] for z, name in sorted((planes or {}).items())]
        self.tag = secrets.token_hex(4)
        self.epoch = 0
        self.sent_bytes = 0  # all lines sent, every epoch (for /engine_stats and tests)
        self.compacted = False  # a run's end was sent as one full state (see page.run.frame)
        self.restart()

    def restart(self, reason: str = "") -> None:
        self.epoch += 1
        self.ref: dict[int, int] = {}  # node key → node number
        self.keys: list[int] = []  # node number → node key
        self.xyz: dict[int, tuple[int, int, int]] = {}  # drawn nodes' positions as sent
        self.labels: dict[int, str] = {}  # drawn nodes' labels as sent
        self.edges: dict[tuple[int, int], int] = {}
        self.names: list | None = None
        self.half: float | None = None
        self.watched: list[int] = []  # the watch list's nodes, as marked
        self.at: int | None = None
        self.steps_sent = 0
        head = {"v": 1, "id": f"{self.tag}-{self.epoch}", "q": Q_POS, "qa": Q_ACT, "decay": self.decay,
                "planes": self.planes, "style": player_style()}
        if reason:
            head["why"] = reason
        self.log = f"{HEADER} {_dump(head)}\n"
        self.sent_bytes += len(self.log)

    def _node(self, key: int, new: list) -> int:
        node = self.ref.get(key)
        if node is None:
            node = self.ref[key] = len(self.keys)
            self.keys.append(key)
            layer, _ = split_key(key)
            new.append([key_name(key)] if layer is None else [key_name(key), None, layer])
        return node

    def update(self, steps: Sequence, scene: Scene, label: Callable[[int], str], at: int | None = None,
               final: bool = False, watched: Sequence[int] = ()) -> str:
        if at != self.at:
            self.restart("scrubbed" if at is not None else "following")
            self.at = at
        if len(steps) < self.steps_sent:  # another run's steps: nothing to build on
            self.restart("new run")
            self.at = at
        lines: list[dict] = []
        for step in steps[self.steps_sent:]:
            if at is not None and step.position > at:
                break
            new: list = []
            fired = []
            for f in step.features:
                fired += [self._node(f.key, new), int(round(f.activation * Q_ACT))]
            line: dict[str, Any] = {"p": step.position}
            if new:
                line["n"] = new
                line["k"] = self.keys[len(self.keys) - len(new):]  # what a click on them reports
            line["f"] = fired
            lines.append(line)
            self.steps_sent += 1
        frame = self._frame(scene, label, final, watched)
        if frame:
            if lines:
                lines[-1].update(frame)
            else:
                lines.append(frame)
        if lines:
            text = "".join(_dump(x) + "\n" for x in lines)
            self.log += text
            self.sent_bytes += len(text)
        return self.log

    def _frame(self, scene: Scene, label: Callable[[int], str], final: bool,
               watched: Sequence[int] = ()) -> dict[str, Any]:
        out: dict[str, Any] = {}
        half = float(scene.half)
        tol = 0 if final else max(1, int(Q_POS * 2 * half / PIXELS))
        drawn: dict[int, int] = {}  # node → row
        moved, drift, labels = [], [], []
        for r, key in enumerate(scene.ids):
            node = self.ref.get(key)
            if node is None:  # drawn before its token was sent (not in steps): nothing to place yet
                continue
            drawn[node] = r
            xyz = tuple(int(round(float(v) * Q_POS)) for v in scene.coords[r])
            was = self.xyz.get(node)
            if was is None:
                moved += [node, *xyz]
                self.xyz[node] = xyz
            elif max(abs(a - b) for a, b in zip(xyz, was)) > tol:  # a small step: sent as one
                drift += [node, *(a - b for a, b in zip(xyz, was))]
                self.xyz[node] = xyz
            text = label(key)
            if text and text != fallback_label(split_key(key)[1]) and self.labels.get(node) != text:
                labels.append([node, text])
                self.labels[node] = text
        gone = [node for node in self.xyz if node not in drawn]
        for node in gone:
            del self.xyz[node]
            self.labels.pop(node, None)
        if moved:
            out["m"] = moved
        if drift:
            out["d"] = drift
        if gone:
            out["u"] = gone
        if labels:
            out["l"] = labels
        ids = scene.ids
        edges: dict[tuple[int, int], int] = {}
        for (ra, rb), bucket in zip(scene.edge_rows.tolist(), scene.edge_bucket.tolist()):
            a, b = self.ref.get(ids[ra]), self.ref.get(ids[rb])
            if a is not None and b is not None:
                edges[(a, b)] = int(bucket)
        changed = [v for ab, k in edges.items() if self.edges.get(ab) != k for v in (*ab, k)]
        removed = [v for ab in self.edges if ab not in edges for v in ab]
        if changed:
            out["e"] = changed
        if removed:
            out["r"] = removed
        self.edges = edges
        names = [[self.ref[ids[r]], int(ax), int(ay)] for r, ax, ay in scene.named if ids[r] in self.ref]
        if names != self.names:
            out["s"] = names
            self.names = names
        if half != self.half:
            out["h"] = half
            self.half = half
        marked = [self.ref[k] for k in watched if k in self.ref]
        if marked != self.watched:
            out["w"] = marked
            self.watched = marked
        return out


class PlayerState:
    """A log decoded as ``assets/player.js`` applies it (for tests and checks
    without a browser): nodes, positions, labels, edges, names, the token position."""

    def __init__(self) -> None:
        self.header: dict | None = None
        self.name: list[str] = []
        self.layer: list[int | None] = []
        self.label: dict[int, str] = {}
        self.xyz: dict[int, tuple[float, float, float]] = {}
        self.last: dict[int, tuple[float, int]] = {}  # node → (activation, position) of its last firing
        self.edges: dict[tuple[int, int], int] = {}
        self.names: list = []
        self.half = 1.0
        self.p: int | None = None
        self.fired: list[int] = []

    @classmethod
    def of(cls, log: str) -> "PlayerState":
        state = cls()
        lines = log.splitlines()
        head, _, body = lines[0].partition(" ")
        if head != HEADER:
            raise ValueError("not a delta log")
        state.header = orjson.loads(body)
        for line in lines[1:]:
            state.apply(orjson.loads(line))
        return state

    def apply(self, d: Mapping[str, Any]) -> None:
        qa, q = self.header["qa"], self.header["q"]
        for n in d.get("n", ()):
            self.name.append(n[0])
            self.layer.append(n[2] if len(n) > 2 else None)
        if d.get("p") is not None:
            self.p = d["p"]
        if "f" in d:
            fired: dict[int, float] = {}
            f = d["f"]
            for node, a in zip(f[0::2], f[1::2]):
                fired[node] = max(fired.get(node, float("-inf")), a / qa)
            for node, a in fired.items():
                self.last[node] = (a, self.p)
            self.fired = list(fired)
        m = d.get("m", ())
        for i in range(0, len(m), 4):
            self.xyz[m[i]] = (m[i + 1] / q, m[i + 2] / q, m[i + 3] / q)
        dm = d.get("d", ())
        for i in range(0, len(dm), 4):
            x, y, z = self.xyz[dm[i]]
            self.xyz[dm[i]] = (x + dm[i + 1] / q, y + dm[i + 2] / q, z + dm[i + 3] / q)
        for node in d.get("u", ()):
            self.xyz.pop(node, None)
        for node, text in d.get("l", ()):
            self.label[node] = text
        r = d.get("r", ())
        for i in range(0, len(r), 2):
            self.edges.pop((r[i], r[i + 1]), None)
        e = d.get("e", ())
        for i in range(0, len(e), 3):
            self.edges[(e[i], e[i + 1])] = e[i + 2]
        if "s" in d:
            self.names = d["s"]
        if "h" in d:
            self.half = d["h"]

    def activation(self, node: int) -> float:
        a, p = self.last.get(node, (0.0, None))
        if p is None or self.p is None:
            return 0.0
        return max(0.0, a * self.header["decay"] ** (self.p - p))

    def drawn(self) -> dict[str, Any]:
        """Drawn nodes by name: position, activation; the ring, the scene names, edges by names."""
        vis = [n for n in range(len(self.name)) if n in self.xyz and n in self.last]
        return {
            "nodes": {self.name[n]: self.xyz[n] for n in vis},
            "activation": {self.name[n]: self.activation(n) for n in vis},
            "ring": sorted(self.name[n] for n in self.fired if n in self.xyz),
            "names": [self.name[s[0]] for s in self.names],
            "edges": {(self.name[a], self.name[b]): k for (a, b), k in self.edges.items()},
            "labels": {self.name[n]: t for n, t in self.label.items()},
        }


def scene_drawn(scene: Scene) -> dict[str, Any]:
    """A :class:`Scene` in :meth:`PlayerState.drawn`'s terms (what a full render draws)."""
    names = [key_name(k) for k in scene.ids]
    return {
        "nodes": {n: tuple(float(v) for v in scene.coords[r]) for r, n in enumerate(names)},
        "activation": {n: float(scene.act[r]) for r, n in enumerate(names)},
        "ring": sorted(names[r] for r in scene.ring),
        "names": [names[r] for r, _, _ in scene.named],
        "edges": {(names[a], names[b]): int(k) for (a, b), k in zip(scene.edge_rows.tolist(),
                                                                    scene.edge_bucket.tolist())},
    }


def lines_of(log: str) -> Iterable[dict]:
    """The deltas of a log (its header left out)."""
    for line in log.splitlines()[1:]:
        yield orjson.loads(line)
