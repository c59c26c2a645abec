"""What a fork costs with and without its run's keys and values (issue 23).

A run of ``--tokens`` new tokens on the GPT-2-small shape (random weights: speed
does not depend on their values), the app's default settings, then the same
fork of it (``--back`` tokens before its end) computed twice, in turns: with the
run's keys and values (:meth:`~axon_core.generation.Generation.keep_kv`: only the
forced token and what follows are fed) and without (the prefix recomputed in one
batched pass first). Each figure is the median over ``--reps`` forks of that kind,
the whole fork (its first pass and every new token, features and decisions included).

Usage: ``python benchmarks/fork.py [--reps 5] [--tokens 128] [--back 8] [--hub DIR]``
The last line is machine-readable:
``fork: tokens=… fork_at=… reuse_ms=… recompute_ms=… ratio=… reuse_positions=… recompute_positions=… kept_mb=…``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import host_line, use_offline_hub  # noqa: E402

PROMPT = "In a quiet village by the sea, an old fisherman told"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--back", type=int, default=8, help="fork this many tokens before the run's end")
    ap.add_argument("--hub", default=None)
    args = ap.parse_args()
    use_offline_hub(args.hub, "axon-bench-hub-")
    import torch

    from axon_core.fork import Fork
    from axon_core.generation import Generation, GenerationSettings
    from axon_core.loading import PairCache

    print(host_line())
    torch.manual_seed(0)
    pair = PairCache(device="cpu").get("gpt2-small-res-jb", "blocks.8.hook_resid_pre")
    settings = GenerationSettings(max_new_tokens=args.tokens, stop_at_eos=False, seed=0)

    def loop(g):
        steps = g.start()
        while not g.done:
            steps.append(g.step())
        return steps

    base_gen = Generation(pair, PROMPT, settings)
    base = loop(base_gen)
    kept = base_gen.keep_kv()
    q = base[-1].position - args.back
    tok = next(c.token_id for c in base[q - 2].decision.candidates if not c.chosen)
    fork = Fork(q, tok)
    times: dict[bool, list[float]] = {True: [], False: []}
    positions, tokens = {}, {}
    for _ in range(args.reps):
        for reuse in (True, False):
            t = time.perf_counter()
            g = Generation(pair, PROMPT, settings, fork=fork, base=base, kv=kept if reuse else None)
            steps = loop(g)
            times[reuse].append(time.perf_counter() - t)
            assert g.kv_reused is reuse
            positions[reuse], tokens[reuse] = g.positions_computed, [s.token_id for s in steps]
    same = tokens[True] == tokens[False]
    reuse_ms, recompute_ms = (1e3 * statistics.median(times[k]) for k in (True, False))
    print(f"same tokens with and without reuse: {same}")
    print(f"fork: tokens={args.tokens} fork_at={q} reuse_ms={reuse_ms:.1f} recompute_ms={recompute_ms:.1f} "
          f"ratio={recompute_ms / reuse_ms:.2f} reuse_positions={positions[True]} "
          f"recompute_positions={positions[False]} kept_mb={kept.nbytes / 2**20:.1f}")


if __name__ == "__main__":
    main()
