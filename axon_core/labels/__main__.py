"""The command line: ``python -m axon_core.labels prefetch NP_ID`` (resumable) or ``get NP_ID INDEX``.

Worked example::

    python -m axon_core.labels prefetch gpt2-small/8-res-jb        # Ctrl-C, run again to resume
    # gpt2-small/8-res-jb explanations [##############################] batch 24/24
    # 24576 labels stored in ~/.cache/axon/labels.sqlite
    python -m axon_core.labels prefetch gpt2-small/8-res-jb --evidence   # also examples and logit lens
    python -m axon_core.labels get gpt2-small/8-res-jb 4821 --cache /tmp/labels.sqlite
    # European capitals
"""

from __future__ import annotations

import argparse
import sys

from .client import LabelFetchError, PrefetchError
from .service import LabelService

DESCRIPTION = "Human labels for SAE features, fetched from Neuronpedia and cached on disk."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m axon_core.labels", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="cmd", required=True)
    pf = sub.add_parser("prefetch", help="bulk-download all labels of an SAE (resumable)")
    pf.add_argument("np_id", help="Neuronpedia id, e.g. gpt2-small/8-res-jb")
    pf.add_argument("--retries", type=int, default=3)
    pf.add_argument("--evidence", action="store_true",
                    help="also the top examples, logit lens and density (the features/ and activations/ folders)")
    get = sub.add_parser("get", help="print one feature's label (blocking)")
    get.add_argument("np_id")
    get.add_argument("index", type=int)
    get.add_argument("--refresh", action="store_true", help="ask Neuronpedia even if cached")
    for p in (pf, get):
        p.add_argument("--cache", help="SQLite cache file (default: $AXON_LABEL_CACHE, else labels.sqlite in AXON's cache dir)")
    args = parser.parse_args(argv)

    with LabelService(cache_path=args.cache) as svc:
        if args.cmd == "get":
            label = None if args.refresh else svc.known(args.np_id, args.index)
            try:
                label = label or svc.fetch(args.np_id, args.index)
            except (LabelFetchError, OSError, ValueError) as e:
                print(f"error: {e}", file=sys.stderr)
                return 1
            print(label if label is not None else "(no label)")
            return 0

        def show(done: int, total: int | None, folder: str = "explanations") -> None:
            if total:
                bar = "#" * (30 * done // total)
                print(f"\r{args.np_id} {folder} [{bar:<30}] batch {done}/{total}", end="", file=sys.stderr, flush=True)
            else:
                print(f"\r{args.np_id} {folder} batch {done}/?", end="", file=sys.stderr, flush=True)

        try:
            n = svc.prefetch(args.np_id, show, retries=args.retries)
            if args.evidence:
                print(file=sys.stderr)
                got = svc.evidence.prefetch(args.np_id, lambda f, d, t: show(d, t, f), retries=args.retries)
                print(f"\nevidence stored: {got['features']} logit-lens rows, {got['activations']} features' "
                      "examples", end="", file=sys.stderr)
        except KeyboardInterrupt:
            print("\ninterrupted; run the same command again to resume", file=sys.stderr)
            return 130
        except (PrefetchError, ValueError) as e:
            print(f"\nstopped: {e}\nrun the same command again to resume", file=sys.stderr)
            return 1
        print(f"\n{n} labels stored in {svc.cache_path or 'memory (cache not writable)'}", file=sys.stderr)
        return 0


if __name__ == "__main__":
    sys.exit(main())
