"""What the decision at every token costs: a step with and without candidates,
direct-path effects and variance explained (issue 23).

Both are the same :class:`~axon_core.generation.Generation` token loop on the
GPT-2-small shape (random weights: speed does not depend on their values),
with the app's default sampling settings; ``decisions=False`` is the loop as
it was (features and attributions to the sampled token only). Runs of each
kind alternate, so a burst of load elsewhere hits both alike; each figure is
the median time per new token over all runs of that kind.

Usage: ``python benchmarks/decision.py [--reps 5] [--tokens 40] [--hub DIR]``
The last line is machine-readable:
``decision: step_ms=… step_with_decision_ms=… ratio=… gradient_ms=… measured_ms=…``
(``gradient_ms``: the gradient flavour for one shown token, off the token loop,
at the run's last decision, as the app runs it for GPT-2: the fast stepper's
prefix pass, then one row from the hook point up and its backward;
``measured_ms``: the measured flavour there, 8 features ablated in turn, the
position re-run from the hook point up in one batch, as the app runs it.)
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


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--hub", help="reuse an offline hub written by scripts/offline_hub.py --size gpt2-small")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    print(host_line(), flush=True)
    use_offline_hub(args.hub, "axon-bench-hub-")

    import torch

    from axon_core.decision import gradient_pushes
    from axon_core.measured import gradient_pushes_fast
    from axon_core.fast_encode import encode_path
    from axon_core.generation import Generation, GenerationSettings
    from axon_core.loading import PairCache
    from axon_core.measured import measured_effects

    torch.manual_seed(0)
    pair = PairCache(device="cpu").get("gpt2-small-res-jb", "blocks.8.hook_resid_pre")
    settings = GenerationSettings(max_new_tokens=args.tokens, stop_at_eos=False, seed=0)

    def run(decisions: bool) -> list[float]:
        """Seconds of each new token's step (forward, encode, sampling and what the step reports)."""
        g = Generation(pair, PROMPT, settings, decisions=decisions)
        steps = g.start()
        times = []
        while not g.done:
            t = time.perf_counter()
            steps.append(g.step())
            times.append(time.perf_counter() - t)
        assert all((s.decision is not None) == decisions for s in steps[-args.tokens:-1])
        last_run[:] = steps
        return times

    last_run: list = []

    run(False), run(True)  # warm up: allocations, the encode path's choice
    plain, with_decision = [], []
    for _ in range(args.reps):
        plain += run(False)
        with_decision += run(True)
    steps = last_run
    tokens = torch.tensor([pair.model.tokenizer.bos_token_id] + [s.token_id for s in steps])
    at = steps[-2]
    feats = [f.index for f in at.features]
    grads, grads_tl = [], []
    args_ = (pair.sae, pair.hook_name, tokens, at.position, feats, at.decision.chosen, at.decision.runner_up.token_id)
    for _ in range(args.reps):
        t = time.perf_counter()
        gradient_pushes_fast(pair.fast_weights, pair.model, *args_)  # what the app runs for GPT-2
        grads.append(time.perf_counter() - t)
        t = time.perf_counter()
        gradient_pushes(pair.model, *args_)  # TransformerLens's forward (the other families)
        grads_tl.append(time.perf_counter() - t)
    measured = []
    for _ in range(args.reps):
        t = time.perf_counter()
        measured_effects(pair.model, pair.sae, pair.hook_name, tokens, at.position, at.decision.chosen,
                         at.decision.runner_up.token_id, threshold=settings.activation_threshold,
                         weights=pair.fast_weights)
        measured.append(time.perf_counter() - t)
    step_ms = 1e3 * statistics.median(plain)
    decision_ms = 1e3 * statistics.median(with_decision)
    print(f"torch threads={torch.get_num_threads()} encode path={encode_path(pair.sae)} "
          f"{args.reps} runs of {args.tokens} tokens each; gradient at position {at.position} "
          f"(through TransformerLens's forward: {1e3 * statistics.median(grads_tl):.1f} ms)")
    print(f"decision: step_ms={step_ms:.2f} step_with_decision_ms={decision_ms:.2f} "
          f"ratio={decision_ms / step_ms:.3f} gradient_ms={1e3 * statistics.median(grads):.1f} "
          f"measured_ms={1e3 * statistics.median(measured):.1f}")


if __name__ == "__main__":
    main()
