"""How many co-firing pairs the NPMI filter keeps, for one run on the offline hub.

Usage: ``python benchmarks/edges.py [--hub DIR] [--tokens 40]`` (writes a tiny
offline hub first when none is given). Last line:
``edges: tokens=… features=… co_firing_pairs=… npmi_kept=…``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import host_line, use_offline_hub  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hub", help="an offline hub from scripts/offline_hub.py")
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--prompt", default="The capital of France is")
    args = ap.parse_args()
    print(host_line(), flush=True)
    use_offline_hub(args.hub, "axon-edges-hub-", size="tiny")

    from axon_core.generation import GenerationSettings, generate
    from axon_core.loading import PairCache
    from axon_core.session import RunSession

    pair = PairCache(device="cpu").get("gpt2-small-res-jb", "blocks.8.hook_resid_pre")
    settings = GenerationSettings(max_new_tokens=args.tokens, seed=0)
    run = RunSession({"neuronpedia_id": None}, settings, None, w_dec=pair.sae.W_dec)
    for step in generate(pair, args.prompt, settings):
        run.add(step)
    counts = run.edge_counts()
    print(f"edges: tokens={len(run.steps)} features={len(run.graph)} "
          f"co_firing_pairs={counts['co_firing_pairs']} npmi_kept={counts['npmi_kept']}")


if __name__ == "__main__":
    main()
