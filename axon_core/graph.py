"""Token steps → the session's feature graph (nodes, co-firing edges, brightness).

Worked example::

    g = GraphState(decay=0.85)
    g.add_step(TokenStep(1, 464, "The", True, (FeatureHit(7, 2.0), FeatureHit(9, 1.0))))
    g.add_step(TokenStep(2, 3139, " cat", True, (FeatureHit(9, 3.0, 0.4),)))
    snap = g.snapshot(max_nodes=300)
    [(n.index, round(n.activation, 2), n.peak, n.tokens) for n in snap.nodes]
    # [(7, 1.7, 2.0, 1), (9, 3.0, 3.0, 2)]   <- 7 decayed one token (2.0 * 0.85)
    snap.edges      # (EdgeView(source=7, target=9, count=1, weight=1.0),)
    snap.active     # frozenset({9})
    g.neighbours(9) # [(7, 1, 1.0)]  as (index, co-fire count, summed weight)

Nodes are every feature seen in the run, prompt tokens included, keyed by
:attr:`FeatureHit.key` (the feature's index in a run of one SAE; layer and
index packed into one integer in a run of several, see :func:`node_key`). A node's
``activation`` is its brightness now: the activation of its last firing times
``decay ** tokens_since``; ``peak`` never decays. An edge joins two features
that fired on the same token; its ``weight`` sums ``min(a, b)`` over those
tokens. Feature firing counts and ``tokens_seen`` give co-occurrence
statistics (:meth:`GraphState.npmi`). One ``GraphState`` per browser session;
nothing here is global.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from itertools import combinations

import numpy as np

from .edges import npmi, top_rank
from .features import FeatureHit
from .generation import TokenStep

LabelSource = Callable[[int], str] | Mapping[int, str] | None


def label_fn(label_of: LabelSource) -> Callable[[int], str]:
    """A ``label_of`` callable, dict or None as a callable returning a str
    (``""`` for unknown features). Labels are untrusted text: escape them
    wherever they are rendered as HTML."""
    if label_of is None:
        return lambda index: ""
    if isinstance(label_of, Mapping):
        return lambda index: str(label_of.get(index, "") or "")
    return lambda index: str(label_of(index) or "")


@dataclass(frozen=True)
class NodeView:
    """One feature as the figure and tables see it."""

    index: int
    activation: float  # brightness now (decayed since its last firing)
    peak: float
    tokens: int  # how many tokens it fired on
    first_position: int
    last_position: int
    attribution: float | None  # on its latest firing
    history: tuple[tuple[int, float], ...]  # (position, activation) per firing


@dataclass(frozen=True)
class EdgeView:
    """Two features that fired on the same token(s); ``source < target``."""

    source: int
    target: int
    count: int  # tokens they co-fired on
    weight: float  # sum over those tokens of min(activation_a, activation_b)


@dataclass(frozen=True)
class GraphSnapshot:
    """An immutable, capped view of a :class:`GraphState` for one frame, as
    numpy columns (a frame at 300 nodes / 1,500 edges is built without a
    Python object per node or edge); ``nodes`` / ``edges`` give per-item views.

    Node columns are in order of first appearance: ``ids``, ``activation``
    (brightness now), ``peak``, ``tokens`` (firings), ``latest`` (activation on
    the snapshot's token, 0 if it did not fire there), ``since`` (tokens since
    it last fired). Edge columns: ``edge_a < edge_b``, ``edge_count``,
    ``edge_weight``, strongest first.
    """

    ids: np.ndarray
    activation: np.ndarray
    peak: np.ndarray
    tokens: np.ndarray
    latest: np.ndarray
    since: np.ndarray
    edge_a: np.ndarray
    edge_b: np.ndarray
    edge_count: np.ndarray
    edge_weight: np.ndarray
    position: int | None  # position of the latest (or chosen) token
    active: frozenset[int]  # features firing on that token
    tokens_seen: int = 0
    graph: "GraphState | None" = field(default=None, compare=False, repr=False)

    @cached_property
    def nodes(self) -> tuple[NodeView, ...]:
        g = self.graph
        return tuple(
            NodeView(i, float(a), float(p), int(t), g._nodes[i].first_position, g._nodes[i].last_position,
                     g._nodes[i].attribution, tuple(g._nodes[i].history)) if g is not None and i in g._nodes
            else NodeView(i, float(a), float(p), int(t), 0, 0, None, ())
            for i, a, p, t in zip(self.ids.tolist(), self.activation.tolist(), self.peak.tolist(),
                                  self.tokens.tolist()))

    @cached_property
    def edges(self) -> tuple[EdgeView, ...]:
        return tuple(edge_views(self.edge_a, self.edge_b, self.edge_count, self.edge_weight,
                                np.arange(len(self.edge_a))))


def empty_snapshot() -> GraphSnapshot:
    z, f = np.zeros(0, np.int64), np.zeros(0)
    return GraphSnapshot(z, f, f, z, f, z, z, z, z, f, None, frozenset(), 0)


@dataclass
class _Node:
    index: int
    last_activation: float  # activation when it last fired
    last_step: int  # step number (0-based count of tokens) of that firing
    peak: float
    tokens: int
    first_position: int
    last_position: int
    attribution: float | None
    history: list[tuple[int, float]] = field(default_factory=list)
    pushes: list[tuple[int, float]] = field(default_factory=list)  # (next_token_id, attribution)


class EdgeTable:
    """Co-firing pairs as parallel numpy arrays (grown by doubling), so a frame
    can filter and rank tens of thousands of edges without a Python loop.

    Row r is the pair ``(a[r], b[r])`` with ``a < b``; ``count[r]`` tokens they
    co-fired on and ``weight[r]`` the summed ``min`` of their activations.
    """

    _COLUMNS = ("a", "b", "na", "nb", "count", "weight", "first")

    def __init__(self) -> None:
        self.row: dict[tuple[int, int], int] = {}
        self.node: dict[int, int] = {}  # feature → its number here (0, 1, … in order of first pairing)
        self.n = 0
        self.a = np.zeros(256, np.int64)
        self.b = np.zeros(256, np.int64)
        self.na = np.zeros(256, np.int64)  # node numbers of a and b, to select pairs by membership fast
        self.nb = np.zeros(256, np.int64)
        self.count = np.zeros(256, np.int64)
        self.weight = np.zeros(256, np.float64)
        self.first = np.zeros(256, np.int64)  # position of the first co-firing

    def add(self, a: int, b: int, weight: float, position: int = 0) -> bool:
        """Count one co-firing of ``a < b``; True if the pair is new."""
        r = self.row.get((a, b))
        new = r is None
        if new:
            if self.n == len(self.a):
                for name in self._COLUMNS:
                    old = getattr(self, name)
                    setattr(self, name, np.concatenate([old, np.zeros_like(old)]))
            r = self.row[(a, b)] = self.n
            self.a[r], self.b[r], self.first[r] = a, b, position
            self.na[r] = self.node.setdefault(a, len(self.node))
            self.nb[r] = self.node.setdefault(b, len(self.node))
            self.n += 1
        self.count[r] += 1
        self.weight[r] += weight
        return new

    def members(self, among) -> np.ndarray:
        """A mask over node numbers: True for the features in ``among``."""
        mask = np.zeros(len(self.node) + 1, bool)
        rows = [self.node.get(int(i), -1) for i in np.asarray(among).tolist()]
        mask[[r for r in rows if r >= 0]] = True
        return mask

    def columns(self, among: np.ndarray | None = None, by_position: int | None = None):
        """(a, b, count, weight) of every pair, or of pairs with both ends in
        ``among``, or (``by_position``) of pairs that had co-fired by then."""
        a, b, count, weight = self.a[: self.n], self.b[: self.n], self.count[: self.n], self.weight[: self.n]
        keep = None
        if among is not None:
            member = self.members(among)
            keep = member[self.na[: self.n]] & member[self.nb[: self.n]]
        if by_position is not None:
            early = self.first[: self.n] <= by_position
            keep = early if keep is None else keep & early
        if keep is not None:
            a, b, count, weight = a[keep], b[keep], count[keep], weight[keep]
        return a, b, count, weight


def rank(score: np.ndarray, count: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row order: highest score first, then most co-firings, then by (a, b)."""
    return np.lexsort((b, a, -count, -score))



def edge_views(a, b, count, weight, order) -> list[EdgeView]:
    return [EdgeView(int(x), int(y), int(c), float(w))
            for x, y, c, w in zip(a[order].tolist(), b[order].tolist(), count[order].tolist(),
                                  weight[order].tolist())]


_NODE_COLUMNS = (("ids", np.int64), ("last_act", np.float64), ("last_step", np.int64),
                 ("peak", np.float64), ("tokens", np.int64))


class GraphState:
    """The growing feature graph of one run; feed it with :meth:`add_step`."""

    def __init__(self, decay: float = 0.85) -> None:
        self.decay = decay
        self.reset()

    def reset(self) -> None:
        """Forget everything (a new run)."""
        self._nodes: dict[int, _Node] = {}
        self._edges = EdgeTable()
        # node columns, one row per node in order of first appearance (for snapshots)
        self._row: dict[int, int] = {}
        self._cols = {name: np.zeros(64, dtype) for name, dtype in _NODE_COLUMNS}
        self._adjacent: dict[int, set[int]] = {}
        self.tokens_seen = 0
        self._positions: list[int] = []
        self.position: int | None = None
        self.active: frozenset[int] = frozenset()
        self._latest: dict[int, float] = {}  # activation on the latest token

    def add_step(self, step: TokenStep) -> None:
        """Account for one token and the features that fired on it."""
        hits: dict[int, FeatureHit] = {}
        for hit in step.features:  # a feature twice on one token: keep the stronger
            if hit.key not in hits or hit.activation > hits[hit.key].activation:
                hits[hit.key] = hit
        now = self.tokens_seen
        for hit in hits.values():
            self._fire(hit, step, now)
        for a, b in combinations(sorted(hits), 2):
            if self._edges.add(a, b, min(hits[a].activation, hits[b].activation), step.position):
                self._adjacent.setdefault(a, set()).add(b)
                self._adjacent.setdefault(b, set()).add(a)
        self.tokens_seen = now + 1
        self.position = step.position
        self._positions.append(step.position)
        self.active = frozenset(hits)
        self._latest = {i: h.activation for i, h in hits.items()}

    def _fire(self, hit: FeatureHit, step: TokenStep, now: int) -> None:
        act, pos = float(hit.activation), step.position
        node = self._nodes.get(hit.key)
        if node is None:
            node = self._nodes[hit.key] = _Node(hit.key, act, now, act, 0, pos, pos, None)
        node.last_activation, node.last_step, node.last_position = act, now, pos
        node.peak = max(node.peak, act)
        node.tokens += 1
        node.attribution = hit.attribution
        node.history.append((pos, act))
        r = self._row.get(hit.key)
        if r is None:
            r = self._row[hit.key] = len(self._row)
            if r == len(self._cols["ids"]):
                self._cols = {k: np.concatenate([v, np.zeros_like(v)]) for k, v in self._cols.items()}
            self._cols["ids"][r] = hit.key
        c = self._cols
        c["last_act"][r], c["last_step"][r], c["peak"][r], c["tokens"][r] = act, now, node.peak, node.tokens
        if hit.attribution is not None and step.next_token_id is not None:
            node.pushes.append((step.next_token_id, float(hit.attribution)))

    # ---- reading -------------------------------------------------------

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, index: object) -> bool:
        return index in self._nodes

    def activation(self, index: int) -> float:
        """Brightness now: last firing's activation decayed by the tokens since."""
        node = self._nodes[index]
        return node.last_activation * self.decay ** (self.tokens_seen - 1 - node.last_step)

    def node(self, index: int) -> NodeView:
        n = self._nodes[index]
        return NodeView(n.index, self.activation(index), n.peak, n.tokens, n.first_position,
                        n.last_position, n.attribution, tuple(n.history))

    def edges(self) -> list[EdgeView]:
        """Every edge, strongest first (no cap)."""
        a, b, count, weight = self._edges.columns()
        return edge_views(a, b, count, weight, rank(weight, count, a, b))

    def edge_columns(self, among=None):
        """Every co-firing pair as numpy columns (a, b, count, weight), optionally
        only those with both ends in ``among`` (feature indices)."""
        return self._edges.columns(None if among is None else np.fromiter(among, np.int64))

    def firing_counts(self, indices: np.ndarray) -> np.ndarray:
        """Tokens each feature of ``indices`` fired on (0 if never), vectorised
        over the node columns (no array as long as the SAE is wide)."""
        n = len(self._row)
        indices = np.asarray(indices, np.int64)
        if n == 0:
            return np.zeros(len(indices), np.int64)
        order = np.argsort(self._cols["ids"][:n])
        ids, tokens = self._cols["ids"][:n][order], self._cols["tokens"][:n][order]
        at = np.minimum(np.searchsorted(ids, indices), n - 1)
        return np.where(ids[at] == indices, tokens[at], 0)

    def firing_count(self, index: int) -> int:
        return self._nodes[index].tokens if index in self._nodes else 0

    def cofire_count(self, a: int, b: int) -> int:
        """Tokens on which features ``a`` and ``b`` both fired."""
        r = self._edges.row.get((min(a, b), max(a, b)))
        return int(self._edges.count[r]) if r is not None else 0

    def npmi(self, a: int, b: int) -> float:
        """Normalised pointwise mutual information of two features firing on the
        same token, over the tokens seen: -1 (never together) … 1 (always together)."""
        return npmi(self.cofire_count(a, b), self.firing_count(a), self.firing_count(b), self.tokens_seen)

    def top_pushes(self, index: int, n: int = 5) -> list[tuple[int, float]]:
        """Tokens this feature pushed hardest toward: (token_id, summed attribution)."""
        total: dict[int, float] = {}
        for token_id, attr in self._nodes[index].pushes:
            total[token_id] = total.get(token_id, 0.0) + attr
        return sorted(total.items(), key=lambda t: (-t[1], t[0]))[:n]

    def pushes(self, index: int) -> list[tuple[int, float]]:
        """The running list of (next_token_id, attribution), one per firing."""
        return list(self._nodes[index].pushes)

    def neighbours(self, index: int, n: int = 8) -> list[tuple[int, int, float]]:
        """The ``n`` features co-firing most with ``index``: (index, count, weight)."""
        rows = []
        table = self._edges
        for other in self._adjacent.get(index, ()):
            r = table.row[(min(index, other), max(index, other))]
            rows.append((other, int(table.count[r]), float(table.weight[r])))
        rows.sort(key=lambda r: (-r[2], -r[1], r[0]))
        return rows[:n]

    def snapshot(self, max_nodes: int = 300, max_edges: int = 1500, keep: Sequence[int] = ()) -> GraphSnapshot:
        """The strongest ``max_nodes`` nodes by peak (features firing on the latest
        token, and the nodes ``keep`` names (a watch list), always kept first) and the
        ``max_edges`` strongest edges among them."""
        n = len(self._row)
        c = {k: v[:n] for k, v in self._cols.items()}
        ids = c["ids"]
        active = np.fromiter(self.active, np.int64, len(self.active))
        if n > max_nodes:  # keep: active and kept first, then by peak, then by index
            first = np.isin(ids, active) | np.isin(ids, np.asarray(keep, np.int64))
            order = np.lexsort((ids, -c["peak"], ~first))
            keep = np.sort(order[:max_nodes])  # back in appearance order
            c = {k: v[keep] for k, v in c.items()}
            ids = c["ids"]
        since = self.tokens_seen - 1 - c["last_step"]
        activation = c["last_act"] * self.decay ** since.astype(np.float64)
        latest = np.where(since == 0, c["last_act"], 0.0)
        a, b, count, weight = self._edges.columns(ids if n > max_nodes else None)
        order = top_rank(weight, count, a, b, max_edges)
        return GraphSnapshot(ids.copy(), activation, c["peak"].copy(), c["tokens"].copy(), latest, since,
                             a[order], b[order], count[order], weight[order],
                             self.position, self.active, self.tokens_seen, self)

    def snapshot_at(self, position: int, among=None, max_edges: int = 1500) -> GraphSnapshot:
        """The graph as it was right after the token at ``position``: nodes not
        yet seen are left out; brightness, peaks and firing counts as they were
        then; the active set is that token's features; edges are the pairs that
        had co-fired by then (weights and counts are the whole run's). ``among``
        restricts the nodes (e.g. to those on screen). For scrubbing: a Python
        loop over nodes, not meant for every live frame."""
        rows = []
        for node in self._nodes.values():
            if among is not None and node.index not in among:
                continue
            past = [(p, a) for p, a in node.history if p <= position]
            if not past:
                continue
            last_p, last_a = past[-1]
            rows.append((node.index, last_a * self.decay ** (position - last_p), max(a for _, a in past),
                         len(past), last_a if last_p == position else 0.0, position - last_p))
        if not rows:
            return replace(empty_snapshot(), position=position)
        ids, act, peak, tokens, latest, since = (np.array(col) for col in zip(*rows))
        ids, tokens, since = ids.astype(np.int64), tokens.astype(np.int64), since.astype(np.int64)
        a, b, count, weight = self._edges.columns(ids, by_position=position)
        order = top_rank(weight, count, a, b, max_edges)
        active = frozenset(int(i) for i in ids[latest > 0])
        seen = sum(1 for p in self._positions if p <= position)
        return GraphSnapshot(ids, act.astype(np.float64), peak.astype(np.float64), tokens, latest.astype(np.float64),
                             since, a[order], b[order], count[order], weight[order], position, active, seen, self)

    def top_features_table(self, label_of: LabelSource, n: int = 20) -> list[dict]:
        """Rows for a table, features on the latest token first (by activation),
        then the rest by current brightness. ``activation`` is on the latest
        token (0.0 if not firing); ``attribution`` is from the latest firing.
        ``label`` is raw text: the renderer must escape it."""
        label = label_fn(label_of)
        order = sorted(self._nodes.values(), key=lambda node: (
            -self._latest.get(node.index, 0.0), -self.activation(node.index),
            -node.peak, node.index))
        return [{"feature": node.index, "label": label(node.index),
                 "activation": self._latest.get(node.index, 0.0), "peak": node.peak,
                 "tokens": node.tokens, "attribution": node.attribution}
                for node in order[:n]]
