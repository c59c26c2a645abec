"""ForceLayout: warm-start stability, cost, determinism, placement."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from axon_core.layout import ForceLayout  # noqa: E402


def radius(points: np.ndarray) -> float:
    return float(np.linalg.norm(points - points.mean(axis=0), axis=1).max())


def growth(frames: int = 60, final: int = 300, max_edges: int = 1000, seed: int = 1):
    """Frames of (node_ids, edges) growing 0 → ``final`` nodes with random co-firing."""
    rng = np.random.default_rng(seed)
    ids: list[int] = []
    weights: dict[tuple[int, int], float] = {}
    for f in range(frames):
        new = list(range(len(ids), final * (f + 1) // frames))
        ids += new
        for _ in range(3):  # three tokens per frame, ≤ 12 features each
            fire = list(dict.fromkeys(new + rng.choice(ids, size=min(len(ids), 8),
                                                        replace=False).tolist()))[:12]
            for a in fire:
                for b in fire:
                    if a < b:
                        weights[(a, b)] = weights.get((a, b), 0.0) + rng.uniform(0.2, 3.0)
        edges = sorted(((a, b, w) for (a, b), w in weights.items()), key=lambda e: -e[2])
        yield list(ids), edges[:max_edges]


def test_growth_is_stable_and_bounded():
    layout = ForceLayout(seed=0)
    prev: dict | None = None
    worst = 0.0
    for ids, edges in growth():
        pos = layout.update(ids, edges)
        assert list(pos) == ids
        if prev:
            before = np.array([prev[i] for i in prev])
            after = np.array([pos[i] for i in prev])
            worst = max(worst, np.linalg.norm(after - before, axis=1).max() / radius(before))
        prev = pos
    print(f"\nlayout: max per-frame drift of existing nodes {100 * worst:.2f}% of radius")
    assert worst <= 0.05
    final = np.array(list(prev.values()))
    assert np.isfinite(final).all()
    r_grown = radius(final)
    assert 2.0 < r_grown < 20.0  # 300 nodes, ideal edge length 1: neither collapsed nor blown up
    for _ in range(100):  # a static graph settles and stays bounded (centering pull, no rescale)
        pos = layout.update(ids, edges)
    assert radius(np.array(list(pos.values()))) < 1.2 * r_grown
    strong = np.mean([np.linalg.norm(np.subtract(pos[a], pos[b])) for a, b, _ in edges[:100]])
    pts = np.array(list(pos.values()))
    pairs = np.random.default_rng(0).integers(0, len(pts), size=(2000, 2))
    typical = np.linalg.norm(pts[pairs[:, 0]] - pts[pairs[:, 1]], axis=1).mean()
    assert strong < 0.5 * typical  # strongly co-firing features end up close


def test_cost_at_300_nodes_1000_edges():
    layout = ForceLayout(seed=0)
    for ids, edges in growth():
        layout.update(ids, edges)
    assert len(ids) == 300 and len(edges) == 1000
    rounds = []  # the best of 3 rounds' medians: other processes share these 2 cores
    for _ in range(3):
        times = []
        for _ in range(20):
            t = time.perf_counter()
            layout.update(ids, edges)
            times.append(time.perf_counter() - t)
        rounds.append(1000 * float(np.median(times)))
    print(f"\nlayout: {min(rounds):.2f} ms median per update at 300 nodes / 1000 edges"
          f" (round medians {', '.join(f'{r:.2f}' for r in rounds)})")
    churn = []  # frames that also drop 12 nodes and place 12 new ones
    rng = np.random.default_rng(0)
    for f in range(20):
        ids = ids[12:] + list(range(1000 + 12 * f, 1012 + 12 * f))
        edges = (edges + [(a, b, 2.0) for a in ids[-12:]
                          for b in rng.choice(ids[:-12], 3).tolist()])[-1000:]
        t = time.perf_counter()
        layout.update(ids, edges)
        churn.append(1000 * (time.perf_counter() - t))
    print(f"layout: {np.median(churn):.2f} ms median per update with 12 new nodes")
    # Times are printed, not decided on (benchmarks/frame.py measures layout_ms); what is
    # checked is that churn keeps every node placed and finite.
    pos = layout.update(ids, edges)
    assert set(pos) == set(ids) and np.isfinite(np.array(list(pos.values()))).all()


def test_deterministic_for_seed_and_sequence():
    def run(seed: int) -> dict:
        layout = ForceLayout(seed=seed)
        for ids, edges in growth(frames=10, final=60):
            pos = layout.update(ids, edges)
        return pos

    a, b, c = run(3), run(3), run(4)
    assert a == b
    assert a != c


def test_new_node_placed_next_to_strongest_placed_neighbour():
    layout = ForceLayout(seed=0, iterations=0)  # placement only
    pos = layout.update([0, 1], [(0, 1, 1.0)])
    assert np.linalg.norm(np.subtract(pos[0], pos[1])) == pytest.approx(1.0)  # one k from 0
    pos = layout.update([0, 1, 2], [(0, 1, 1.0), (2, 0, 0.1), (1, 2, 5.0)])
    assert np.linalg.norm(np.subtract(pos[2], pos[1])) == pytest.approx(1.0)  # anchored to 1
    assert np.linalg.norm(np.subtract(pos[2], pos[0])) != pytest.approx(1.0)
    assert pos == layout.positions


def test_orphan_goes_on_the_shell():
    layout = ForceLayout(seed=0, iterations=0)
    ids = list(range(20))
    layout.update(ids, [(i, i + 1, 1.0) for i in range(19)])
    before = np.array(list(layout.positions.values()))
    pos = layout.update(ids + [99], [(i, i + 1, 1.0) for i in range(19)])
    assert np.linalg.norm(pos[99]) == pytest.approx(max(radius(before), 1.0))


def test_existing_nodes_barely_move_when_one_is_added():
    layout = ForceLayout(seed=0)
    ids, edges = list(range(50)), [(i, (i * 7 + 3) % 50, 1.0) for i in range(50)]
    for _ in range(30):
        before = layout.update(ids, edges)
    after = layout.update(ids + [50], edges + [(50, 0, 1.0)])
    pts = np.array([before[i] for i in ids])
    drift = max(np.linalg.norm(np.subtract(after[i], before[i])) for i in ids)
    assert drift <= 0.04 * radius(pts) + 1e-12


def test_dropped_nodes_forgotten_and_bad_edges_ignored():
    layout = ForceLayout(seed=0)
    layout.update([1, 2, 3], [(1, 2, 1.0), (2, 3, 1.0)])
    pos = layout.update([1, 2], [(1, 2, 1.0), (2, 3, 1.0), (1, 1, 4.0), (1, 2, 0.0)])
    assert set(pos) == {1, 2} and set(layout.positions) == {1, 2}
    assert all(np.isfinite(v).all() for v in pos.values())
    assert layout.update([], []) == {}
    assert list(layout.update([7], [])) == [7]


def test_numpy_columns_give_the_same_positions_as_tuples():
    """update_arrays (ids looked up by sorting) moves every node exactly as update
    (dicts and tuples) does, frame after frame, unknown and self-loop edges included,
    and nodes that leave and come back."""
    by_tuples, by_arrays = ForceLayout(seed=3), ForceLayout(seed=3)
    for f, (ids, edges) in enumerate(growth(frames=20, final=120)):
        if f % 5 == 4:
            ids = ids[::-2]  # half the nodes leave for a frame, the rest in another order
        edges = edges + [(ids[0], ids[0], 2.0), (ids[-1], 10**6, 1.0)]
        want = by_tuples.update(ids, edges)
        a, b, w = (np.array(col) for col in zip(*edges))
        by_arrays.update_arrays(np.array(ids, np.int64), a.astype(np.int64), b.astype(np.int64), w.astype(np.float64))
        assert by_arrays.positions == want and list(by_arrays.positions) == ids
