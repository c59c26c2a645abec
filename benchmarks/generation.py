"""Per-token cost of AXON's generator against an AXON-style full-forward loop.

Builds the full GPT-2-small-shape offline hub (random weights: speed does not
depend on weight values), then in one process measures:

(a) the AXON-style loop: at every token, ``run_with_hooks`` over the whole
    sequence, capture the hook, ``sae.encode`` the last position, sample;
(b) our generator (``axon_core.generation.generate``), KV-cached;
(c) the memory copy bandwidth, and from it the floor: bytes of weights one
    token must read (transformer blocks + unembedding + SAE encoder) / bandwidth.

Each figure is a median over repetitions. The 400-token AXON loop would take
minutes per repetition, so by default it is measured at every 25th sequence
length (each a median of 3 steps) and averaged over lengths: a step at length
L costs one full forward of L tokens whatever came before, so this is the
loop's mean per-token cost. ``--full`` runs the whole 400-token loop instead.

Usage: ``python benchmarks/generation.py [--reps 3] [--full] [--hub DIR]``
The last line is machine-readable:
``generation: ours_ms_per_token=… axon_ms_per_token=… speedup_100=… speedup_400=… floor_ms=…``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import axon_style_step, host_line, use_offline_hub  # noqa: E402

PROMPT = "In a quiet village by the sea, an old fisherman told"  # 10 tokens + BOS (below)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="run the whole 400-token AXON-style loop")
    ap.add_argument("--hub", help="reuse an offline hub written by scripts/offline_hub.py --size gpt2-small")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    print(host_line(), flush=True)
    use_offline_hub(args.hub, "axon-bench-hub-")

    import torch

    from axon_core.generation import GenerationSettings, generate
    from axon_core.loading import PairCache

    torch.manual_seed(0)
    pair = PairCache(device="cpu").get("gpt2-small-res-jb", "blocks.8.hook_resid_pre")
    model, sae = pair.model, pair.sae
    print(f"torch threads={torch.get_num_threads()}  d_model={model.cfg.d_model}  d_sae={sae.cfg.d_sae}")
    prompt_len = model.to_tokens(PROMPT).shape[1]
    settings = GenerationSettings(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0,
                                  stop_at_eos=False, seed=0, feature_k=12)

    def ours(n_new: int) -> list[float]:
        """Per-token seconds of one run, generated tokens only."""
        import dataclasses

        times, t = [], time.perf_counter()
        for step in generate(pair, PROMPT, dataclasses.replace(settings, max_new_tokens=n_new)):
            now = time.perf_counter()
            if not step.is_prompt:
                times.append(now - t)
            t = now
        assert len(times) == n_new
        return times

    axon_step = axon_style_step(model, sae, pair.hook_name)

    def axon_loop(n_new: int) -> float:
        tokens = model.to_tokens(PROMPT)[0]
        t = time.perf_counter()
        for _ in range(n_new):
            tokens = torch.cat([tokens, torch.tensor([axon_step(tokens)])])
        return (time.perf_counter() - t) / n_new

    def axon_sampled(n_new: int, every: int = 25) -> float:
        costs = []
        for length in range(prompt_len, prompt_len + n_new, every):
            tokens = torch.randint(0, 50000, (length,))
            reps = []
            for _ in range(3):
                t = time.perf_counter()
                axon_step(tokens)
                reps.append(time.perf_counter() - t)
            costs.append(statistics.median(reps))
        return statistics.mean(costs)

    ours(5)  # warm up allocations and the thread pool
    res: dict[str, float] = {}
    for n_new in (100, 400):
        runs = [ours(n_new) for _ in range(args.reps)]
        res[f"ours_mean_{n_new}"] = statistics.median(statistics.mean(r) for r in runs)
        res[f"ours_median_{n_new}"] = statistics.median(statistics.median(r) for r in runs)
        print(f"ours  {n_new:3d} new tokens: median {1e3 * res[f'ours_median_{n_new}']:.1f} ms/token, "
              f"mean {1e3 * res[f'ours_mean_{n_new}']:.1f} ms/token  ({args.reps} reps)")
    res["axon_100"] = statistics.median(axon_loop(100) for _ in range(args.reps))
    print(f"axon  100 new tokens: mean {1e3 * res['axon_100']:.1f} ms/token (full loop, median of {args.reps})")
    if args.full:
        res["axon_400"] = axon_loop(400)
        how = "full loop, 1 rep"
    else:
        res["axon_400"] = axon_sampled(400)
        how = "every 25th length, median of 3 steps each"
    print(f"axon  400 new tokens: mean {1e3 * res['axon_400']:.1f} ms/token ({how})")

    # (c) memory copy bandwidth and the floor.
    src = torch.ones(64 * 2**20)  # 256 MB
    dst = torch.empty_like(src)
    copies = []
    for _ in range(7):
        t = time.perf_counter()
        dst.copy_(src)
        copies.append(time.perf_counter() - t)
    bandwidth = src.numel() * src.element_size() / statistics.median(copies)
    reads = []
    for _ in range(7):
        t = time.perf_counter()
        src.sum()
        reads.append(time.perf_counter() - t)
    read_bandwidth = src.numel() * src.element_size() / statistics.median(reads)
    w = pair.fast_weights
    per_token = sum(
        t.numel() * t.element_size() for b in w.blocks for t in b.values() if t is not None
    )
    per_token += w.W_U.numel() * w.W_U.element_size() + sae.W_enc.numel() * sae.W_enc.element_size()
    floor = per_token / bandwidth
    print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s; weights read per token {per_token / 1e6:.0f} MB; "
          f"floor {1e3 * floor:.1f} ms/token")
    print(f"(for comparison: read-only bandwidth {read_bandwidth / 1e9:.1f} GB/s, "
          f"i.e. {1e3 * per_token / read_bandwidth:.1f} ms/token just to stream the weights once)")

    ours_ms = 1e3 * res["ours_median_100"]
    print(
        f"generation: ours_ms_per_token={ours_ms:.1f} axon_ms_per_token={1e3 * res['axon_100']:.1f} "
        f"speedup_100={res['axon_100'] / res['ours_mean_100']:.1f} "
        f"speedup_400={res['axon_400'] / res['ours_mean_400']:.1f} floor_ms={1e3 * floor:.1f}"
    )


if __name__ == "__main__":
    main()
