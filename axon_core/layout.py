"""A warm-started 3D force-directed (Fruchterman–Reingold) layout for a growing graph.

Worked example::

    layout = ForceLayout(seed=0)
    pos = layout.update([7, 9], [(7, 9, 1.0)])          # 9 lands next to 7
    pos = layout.update([7, 9, 12], [(7, 9, 1.0), (9, 12, 2.0)])
    pos[12]   # (x, y, z): near 9; 7 and 9 moved by at most ``max_drift`` of the radius

Each call keeps the positions of nodes it has seen, drops nodes that are
gone, and places each new node one ideal edge length from its strongest
already-placed neighbour (in a deterministic pseudo-random direction), or on
the layout's outer shell when it has none. Then a few iterations of
Fruchterman–Reingold forces (all-pairs repulsion, weighted edge springs and a
gentle pull toward the origin that keeps the layout bounded) move the nodes,
each step capped: new nodes may travel freely, nodes that were already on
screen by at most ``max_drift`` of the layout radius per call, so the picture
never jumps. There is no rescaling. Positions are float64 numpy; the O(N²) repulsion of each
iteration is computed in float32 (~0.3 ms at 300 nodes here); a call is
deterministic for a fixed seed and sequence of calls. :meth:`update_arrays`
takes numpy columns and looks ids up by sorting (no per-edge tuples).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from itertools import repeat

import numpy as np

Position = tuple[float, float, float]


class ForceLayout:
    """Positions for a graph that changes a little between calls."""

    def __init__(self, seed: int = 0, k: float = 1.0, iterations: int = 3,
                 max_drift: float = 0.04, gravity: float = 1.0, step: float = 0.05) -> None:
        self.seed, self.k, self.iterations = seed, k, iterations
        self.max_drift, self.gravity, self.step = max_drift, gravity, step
        self._work = np.empty(0)
        self.reset()

    def reset(self) -> None:
        """Forget every position (a new run)."""
        self._rng = np.random.default_rng(self.seed)
        self._keys: list[Hashable] = []  # node id of each row of self._xyz
        self._sorted: tuple[np.ndarray, np.ndarray] | None = (np.zeros(0, np.int64), np.zeros(0, np.intp))
        self._row_of: dict[Hashable, int] | None = {}
        self._xyz = np.zeros((0, 3))

    @property
    def _row(self) -> dict[Hashable, int]:
        """Node id → row of the last update (built when first asked for)."""
        if self._row_of is None:
            self._row_of = {node: r for r, node in enumerate(self._keys)}
        return self._row_of

    @property
    def positions(self) -> dict[Hashable, Position]:
        """The positions returned by the last :meth:`update`."""
        return dict(zip(self._keys, map(tuple, self._xyz.tolist())))

    def update(self, node_ids: Sequence[Hashable],
               edges: Iterable[tuple[Hashable, Hashable, float]],
               planes: Sequence[float] | None = None) -> dict[Hashable, Position]:
        """New positions for ``node_ids`` given weighted ``edges`` (i, j, weight);
        edges to unknown nodes, self-loops and weights ≤ 0 are ignored.

        ``planes`` (one value per node id, NaN for none) pins nodes to the plane
        z = value: they move in x and y only (a run of several layers draws each
        layer on its own plane; edges between planes still pull in x and y)."""
        ids = list(dict.fromkeys(node_ids))
        row = {node: r for r, node in enumerate(ids)}
        edges = list(edges)
        if edges:
            a, b, weight = zip(*edges)
            src, dst, w = _usable(_rows(row, a), _rows(row, b), np.array(weight, dtype=np.float64))
        else:
            src, dst, w = _usable(np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros(0))
        z = None
        if planes is not None:
            first = {node: value for node, value in zip(node_ids, planes)}
            z = np.array([first[node] for node in ids], dtype=np.float64)
        pos = self._move(_rows(self._row, ids), src, dst, w, z)
        self._keys, self._row_of, self._xyz = ids, row, pos
        self._sorted = None
        return dict(zip(ids, map(tuple, pos.tolist())))

    def release_buffers(self) -> None:
        """Drop the n×n work arrays (0.7 MB at 300 nodes) until the next update."""
        self._work = np.empty(0)

    def update_arrays(self, node_ids: np.ndarray, src: np.ndarray, dst: np.ndarray,
                      weight: np.ndarray, planes: np.ndarray | None = None) -> None:
        """:meth:`update` from numpy columns (distinct integer node ids; edge ends and
        weights; optionally each node's plane), looking ids up by sorting instead of
        per-edge tuples and dicts; the same positions. Read :attr:`positions` after."""
        ids = np.asarray(node_ids)
        order = np.argsort(ids, kind="stable")
        keys = ids[order]
        if ids.dtype.kind not in "iu" or (keys[1:] == keys[:-1]).any():
            self.update(ids.tolist(), zip(np.asarray(src).tolist(), np.asarray(dst).tolist(),
                                          np.asarray(weight).tolist()), planes)
            return
        s, d, w = _usable(_lookup(keys, order, src), _lookup(keys, order, dst), np.asarray(weight, np.float64))
        if self._sorted is not None:
            before = _lookup(*self._sorted, ids)
        else:
            before = _rows(self._row, ids.tolist())
        z = None if planes is None else np.asarray(planes, dtype=np.float64)
        self._xyz = self._move(before, s, d, w, z)
        self._keys, self._row_of, self._sorted = ids.tolist(), None, (keys, order)

    def _move(self, before: np.ndarray, src: np.ndarray, dst: np.ndarray, w: np.ndarray,
              z: np.ndarray | None) -> np.ndarray:
        """The new positions of rows whose previous rows are ``before`` (-1: new)."""
        z = z if z is not None and np.isfinite(z).any() else None
        old = before >= 0
        pos = np.zeros((len(before), 3))
        pos[old] = self._xyz[before[old]]
        self._place_new(pos, old, src, dst, w)
        pinned = None if z is None else np.isfinite(z)
        if pinned is not None:
            pos[pinned, 2] = z[pinned]
        if len(before) > 1 and self.iterations > 0:
            radius = _radius(pos[old])
            cap = np.where(old, self.max_drift * radius / self.iterations, 0.5 * self.k)
            for _ in range(self.iterations):
                pos += _capped(self.step * self._forces(pos, src, dst, w), cap)
                if pinned is not None:
                    pos[pinned, 2] = z[pinned]
        return pos

    def _place_new(self, pos: np.ndarray, placed: np.ndarray, src: np.ndarray,
                   dst: np.ndarray, w: np.ndarray) -> None:
        """Put each unplaced row next to its strongest placed neighbour, in order."""
        placed = placed.copy()
        new = np.flatnonzero(~placed)
        if not len(new):
            return
        directions = self._rng.normal(size=(len(new), 3))
        directions /= np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-12)
        # both directions of every edge from a new node, strongest first
        a, b, ww = np.concatenate([src, dst]), np.concatenate([dst, src]), np.concatenate([w, w])
        from_new = ~placed[a]
        a, b, ww = a[from_new], b[from_new], ww[from_new]
        order = np.argsort(-ww, kind="stable")
        partners: dict[int, list[int]] = {}
        for i, j in zip(a[order].tolist(), b[order].tolist()):
            partners.setdefault(i, []).append(j)
        shell = max(_radius(pos[placed]) if placed.any() else 0.0, self.k)
        for r, direction in zip(new.tolist(), directions):
            anchor = next((j for j in partners.get(r, ()) if placed[j]), None)
            if anchor is None:
                pos[r] = direction * shell
            else:
                pos[r] = pos[anchor] + direction * self.k
            placed[r] = True

    def _forces(self, pos: np.ndarray, src: np.ndarray, dst: np.ndarray,
                w: np.ndarray) -> np.ndarray:
        """k³/d² repulsion between all pairs, w·d²/k springs, and a pull to the origin."""
        n = len(pos)
        d2, coef = self._buffers(n)
        # the n×n part in float32 (half the memory traffic; relative error ~1e-5 in the
        # repulsion), on positions centred first so |p|² stays small against p·q
        p = (pos - pos.mean(axis=0)).astype(np.float32)
        sq = (p * p).sum(axis=1)[:, None]
        ones = np.ones((n, 1), np.float32)
        # squared distances |p|² - 2 p·q + |q|² as one product of [p, |p|², 1] and [-2q, 1, |q|²]
        np.matmul(np.hstack([p, sq, ones]), np.hstack([-2.0 * p, ones, sq]).T, out=d2)
        np.maximum(d2, np.float32(1e-6 * self.k * self.k), out=d2)
        d2.flat[:: n + 1] = np.inf  # no self-repulsion
        np.sqrt(d2, out=coef)
        np.multiply(coef, d2, out=coef)
        np.divide(np.float32(self.k ** 3), coef, out=coef)  # k³/d² times the unit vector (p - q)/d
        # Σ_q coef·(p - q) = p·Σ_q coef - Σ_q coef·q, both from one product with [q, 1]
        sums = coef @ np.hstack([p, ones])
        force = (p * sums[:, 3:] - sums[:, :3]).astype(np.float64)
        if len(w):
            delta = pos[dst] - pos[src]
            pull = delta * (w * np.sqrt((delta * delta).sum(axis=1)) / self.k)[:, None]
            for c in range(3):
                force[:, c] += np.bincount(src, pull[:, c], n) - np.bincount(dst, pull[:, c], n)
        force -= self.gravity * pos
        return force

    def _buffers(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Two reusable n×n work arrays (fresh big arrays cost page faults each time)."""
        if self._work.size < 2 * n * n:
            self._work = np.empty(2 * n * n, np.float32)
        return self._work[: n * n].reshape(n, n), self._work[n * n: 2 * n * n].reshape(n, n)


def _usable(src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, ...]:
    """(source rows, target rows, weights scaled to (0, 1]) of the usable edges:
    both ends known (row ≥ 0), no self-loops, weight > 0."""
    ok = (src >= 0) & (dst >= 0) & (src != dst) & (w > 0)
    w = w[ok]
    if len(w):
        w = np.sqrt(w / w.max())  # strongest edge 1, weak ones still pull a little
    return src[ok], dst[ok], w


def _lookup(keys: np.ndarray, order: np.ndarray, queries) -> np.ndarray:
    """Row of each query among sorted ``keys`` (``order``: their rows), -1 where absent."""
    queries = np.asarray(queries)
    if not len(keys):
        return np.full(len(queries), -1, np.intp)
    at = np.minimum(np.searchsorted(keys, queries), len(keys) - 1)
    return np.where(keys[at] == queries, order[at], -1).astype(np.intp, copy=False)


def _rows(row: dict[Hashable, int], keys: Sequence[Hashable]) -> np.ndarray:
    """Row of each key, -1 where unknown."""
    return np.fromiter(map(row.get, keys, repeat(-1)), dtype=np.intp, count=len(keys))


def _capped(force: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """Each row of ``force`` as a displacement no longer than its ``cap``."""
    length = np.sqrt((force * force).sum(axis=1))
    scale = np.minimum(1.0, cap / np.maximum(length, 1e-12))
    return force * scale[:, None]


def _radius(pos: np.ndarray) -> float:
    """Largest distance of a point from the centroid."""
    if not len(pos):
        return 0.0
    centred = pos - pos.mean(axis=0)
    return float(np.sqrt((centred * centred).sum(axis=1)).max())
