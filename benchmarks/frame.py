"""Server-side cost of one graph frame at 300 nodes, its payload, and node drift.

Feeds a RunSession with synthetic token steps (12 features per token drawn
from a pool, so the graph grows to 300 nodes and ~1,000+ edges), building a
frame (snapshot + layout update + edge scoring + figure dict + orjson, i.e.
``RunSession.figure_json()``) after every token: the most a view could ask for. Prints medians at 300 nodes and the largest per-frame move of nodes that
were already on screen, as a fraction of the layout radius.

Usage: ``OPENBLAS_NUM_THREADS=1 python benchmarks/frame.py``
Last line: ``frame: build_ms=… payload_kb=… layout_ms=… max_drift_pct=… nodes=… edges=…``
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from axon_core.features import FeatureHit  # noqa: E402
from benchmarks.common import host_line  # noqa: E402
from axon_core.generation import GenerationSettings, TokenStep  # noqa: E402
from axon_core.session import RunSession  # noqa: E402


def synthetic_steps(n_tokens: int, pool: int = 360, k: int = 12, seed: int = 0):
    """Tokens whose features come from a growing pool, with some recurring themes."""
    rng = np.random.default_rng(seed)
    for p in range(1, n_tokens + 1):
        reach = min(pool, 20 + 4 * p)
        idx = rng.choice(reach, size=k, replace=False)
        acts = rng.gamma(2.0, 2.0, size=k)
        feats = tuple(FeatureHit(int(i), float(a), float(rng.normal())) for i, a in zip(idx, acts))
        yield TokenStep(p, 1000 + p, f"t{p}", p <= 5, feats, next_token_id=1001 + p)


def main() -> None:
    print(host_line(), flush=True)
    run = RunSession({"neuronpedia_id": "gpt2-small/8-res-jb"}, GenerationSettings(), None, frame_interval=0)
    build, layout_ms, sizes, drifts = [], [], [], []
    prev: dict[int, tuple] = {}
    for step in synthetic_steps(200):
        run.add(step)
        t = time.perf_counter()
        snap = run.graph.snapshot(max_nodes=run.max_nodes)
        run.layout.update_arrays(snap.ids, snap.edge_a, snap.edge_b, snap.edge_weight)
        t_layout = time.perf_counter() - t
        payload = run.figure_json(relayout=False)  # + snapshot again, edge scoring, figure, JSON
        t_total = time.perf_counter() - t  # a live frame (figure_json() with relayout) does no more
        pos = run.layout.positions
        coords = np.array(list(pos.values()))
        radius = float(np.linalg.norm(coords, axis=1).max()) if len(coords) else 1.0
        moved = [np.linalg.norm(np.subtract(pos[i], prev[i])) / radius for i in prev if i in pos]
        if moved:
            drifts.append(max(moved))
        prev = dict(pos)
        if len(snap.ids) >= 300:
            build.append(t_total)
            layout_ms.append(t_layout)
            sizes.append(len(payload))
    snap = run.graph.snapshot()
    print(f"frames at 300 nodes: {len(build)}; edges in snapshot: {len(snap.edge_a)}")
    print(f"build (layout + figure + orjson): median {1e3 * statistics.median(build):.1f} ms; "
          f"layout alone {1e3 * statistics.median(layout_ms):.1f} ms; payload {statistics.median(sizes) / 1e3:.0f} KB")
    print(f"largest per-frame move of existing nodes: {100 * max(drifts):.1f}% of the radius "
          f"(median frame's largest: {100 * statistics.median(drifts):.1f}%)")
    print(f"frame: build_ms={1e3 * statistics.median(build):.1f} payload_kb={statistics.median(sizes) / 1e3:.0f} "
          f"layout_ms={1e3 * statistics.median(layout_ms):.1f} max_drift_pct={100 * max(drifts):.1f} "
          f"nodes={len(snap.ids)} edges={len(snap.edge_a)}")


if __name__ == "__main__":
    main()
