"""Several SAEs in one forward, and the causal check, on the GPT-2-small shape.

In one process, side by side (two runs of the same request step in turns,
token by token, so both see the same machine load):

(a) ``one_layer_ms``: per new token, a run reading one SAE
    (``blocks.8.hook_resid_pre``): ``Generation.step`` = one KV-cached forward,
    the SAE encode, top-k, attributions;
(b) ``four_layers_ms``: the same run reading four SAEs (blocks 2, 5, 8, 11) in
    the same forward (``Generation(..., extra=...)``);
(c) ``causal_check_ms``: :func:`axon_core.depth.causal_check` for one token of a
    finished run: its 8 strongest layer-2 features ablated one at a time (as one
    batch), the token re-run from layer 2 up, layers 5, 8 and 11 read.

Medians over all measured tokens / repetitions. Random weights: speed does not
depend on weight values.

Usage: ``python benchmarks/depth.py [--reps 3] [--tokens 40] [--hub DIR]``
(``--hub``: an offline hub with SAEs at blocks 2, 5, 8 and 11, e.g. one written by
``python scripts/offline_hub.py --out DIR --size gpt2-small``; without it one is
written to a temporary folder, ≈ 30 s). The last line is machine-readable:
``depth: one_layer_ms=… four_layers_ms=… ratio=… causal_check_ms=…``
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
LAYERS = (2, 5, 8, 11)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=40, help="new tokens per run")
    ap.add_argument("--hub", help="reuse a GPT-2-small-shape offline hub with SAEs at blocks 2, 5, 8, 11")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    print(host_line(), flush=True)
    use_offline_hub(args.hub, "axon-bench-hub-", layers=LAYERS)

    import torch

    from axon_core.depth import causal_check, run_tokens
    from axon_core.generation import Generation, GenerationSettings
    from axon_core.loading import PairCache

    cache = PairCache(max_saes=len(LAYERS), device="cpu")
    pairs = {i: cache.get("gpt2-small-res-jb", f"blocks.{i}.hook_resid_pre") for i in LAYERS}
    model = pairs[8].model
    print(f"torch threads={torch.get_num_threads()}  d_model={model.cfg.d_model}  "
          f"d_sae={pairs[8].sae.cfg.d_sae}  layers={LAYERS}")
    settings = GenerationSettings(max_new_tokens=args.tokens, temperature=1.0, top_k=0, top_p=1.0,
                                  repetition_penalty=1.0, stop_at_eos=False, seed=0, feature_k=12)
    extra = [pairs[i] for i in LAYERS if i != 8]

    def pair_of_runs() -> tuple[Generation, Generation]:
        """The same request read at one layer and at four."""
        return (Generation(pairs[8], PROMPT, settings),
                Generation(pairs[8], PROMPT, settings, extra=extra))

    def side_by_side(record: bool) -> list:
        """Step both runs token by token, alternating which goes first; per-token seconds."""
        runs = pair_of_runs()
        steps = [g.start() for g in runs]
        n = 0
        while not runs[0].done:
            for i in ((0, 1) if n % 2 == 0 else (1, 0)):
                t = time.perf_counter()
                steps[i].append(runs[i].step())
                if record:
                    (one if i == 0 else four).append(time.perf_counter() - t)
            n += 1
        return steps[1]

    one: list[float] = []
    four: list[float] = []
    side_by_side(record=False)  # warm-up
    for rep in range(args.reps):
        steps = side_by_side(record=True)
        print(f"rep {rep + 1}: one layer {1e3 * statistics.median(one):.1f} ms/token, "
              f"four layers {1e3 * statistics.median(four):.1f} ms/token (medians so far)")

    tokens = run_tokens(steps, model.tokenizer.bos_token_id)
    # the generated token with the most layer-2 features (8 of them ablated)
    step = max((s for s in steps if not s.is_prompt), key=lambda s: sum(f.layer == 2 for f in s.features))
    position = step.position
    features = list(causal_check(model, tokens, position, pairs[2], [], k=8, weights=pairs[8].fast_weights).features)
    active = len(features)  # features above 0 (at most 8); pad with silent ones so 8 ablations run
    features += [i for i in range(8 + len(features)) if i not in features][: 8 - len(features)]
    checks = []
    for _ in range(max(5, args.reps)):
        t = time.perf_counter()
        check = causal_check(model, tokens, position, pairs[2], [pairs[5], pairs[8], pairs[11]],
                             features=features, weights=pairs[8].fast_weights)
        checks.append(time.perf_counter() - t)
    edges = check.edges(min_abs=0.5)
    print(f"causal check at position {position} of {len(tokens)}: {len(check.features)} features ablated "
          f"({active} of them active), "
          f"{sum(len(t.features) for t in check.targets)} later features read, {len(edges)} effects ≥ 0.5")

    a, b, c = 1e3 * statistics.median(one), 1e3 * statistics.median(four), 1e3 * statistics.median(checks)
    print(f"depth: one_layer_ms={a:.1f} four_layers_ms={b:.1f} ratio={b / a:.2f} causal_check_ms={c:.1f}")


if __name__ == "__main__":
    main()
