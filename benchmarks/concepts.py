"""Names from the first run, and finding a feature: the issue-22 numbers on a GPT-2-small-shape hub.

A fresh start as a Space without persistent storage has one: an empty label
cache and a stand-in Neuronpedia (tests/neuronpedia_fake.py) answering every
request in 200 ms, with all 24,576 labels of gpt2-small/8-res-jb in its API
and in its bulk export (24 batches of 1,024, ordered by index as text, as the
real bucket's). ``Services.start`` (as ``python app.py``) starts the default
SAE's bulk download; a first visitor's 60-token run of "The capital of France
is" is viewed as the page views it (``run_frames``: frames, table, label tail).

- ``bulk_s``: from the start of ``Services.start`` until every label of the default SAE is local
- ``first_run_named_pct``: share of the scene's names and the table's rows named at the end of that run
- ``step_ms``: the engine's median time per token of that run
- ``search_ms``: median local search ("Find a feature") over the 24,576 cached labels
- ``step_watch16_ms``, ``watch_ratio``: one token of the same run watching 16 features (8 that fired,
  8 that did not), and its ratio to the same run unwatched, both stepped side by side in turns
  (ABBA, each token of each run timed, medians), so a burst of load elsewhere hits both alike

Usage: ``python benchmarks/concepts.py --hub /tmp/axon-hub-full``
Last line: ``concepts: bulk_s=… first_run_named_pct=… step_ms=… step_watch16_ms=… watch_ratio=… search_ms=…``
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchmarks.common import host_line, use_offline_hub  # noqa: E402

NP = "gpt2-small/8-res-jb"
D_SAE = 24_576
PROMPT = "The capital of France is"
WORDS = ("capital city France Paris European country river mountain number digit code python function "
         "loop variable month year date name person woman man king queen war battle money price market "
         "token comma period quote bracket plural verb noun adjective past tense future music song film "
         "book letter sentence start end beginning after before question answer science physics chemistry "
         "biology cell water fire food drink colour red blue green small large first last legal court law "
         "sports football team player game computer internet email phone street house door window").split()
QUERIES = ["capital", "fran", "the", "python code", "legal court", "colour", "zzzz", "q"]


def labels() -> dict[int, str]:
    rng = random.Random(0)
    return {i: f"{' '.join(rng.sample(WORDS, 3))} ({rng.choice(WORDS)} context)" for i in range(D_SAE)}


def watch_cost(pair, settings, fired: list[int], rounds: int = 3) -> tuple[float, float, float]:
    """Median ms per new token of a run watching 16 features and of the same run unwatched,
    stepped in turns (ABBA); returns (plain_ms, watch16_ms, ratio)."""
    from axon_core.generation import Generation
    from axon_core.watch import resolve_watch

    never = [i for i in range(D_SAE) if i not in set(fired)]
    keys, _ = resolve_watch([(None, i) for i in (fired[:8] + never[:: D_SAE // 8])[:16]], [pair])
    assert len(keys) == 16
    times: dict[bool, list[float]] = {False: [], True: []}
    for r in range(rounds):
        gens = {w: Generation(pair, PROMPT, settings, watch=keys if w else ()) for w in (False, True)}
        for g in gens.values():
            g.start()
        turn = 0
        while not all(g.done for g in gens.values()):
            order = (False, True) if turn % 2 == 0 else (True, False)
            for w in order:
                g = gens[w]
                if g.done:
                    continue
                t = time.perf_counter()
                step = g.step()
                times[w].append(time.perf_counter() - t)
                if w:
                    assert len(step.watched) == 16
            turn += 1
        del gens
    plain, watched = (1e3 * statistics.median(times[w]) for w in (False, True))
    return plain, watched, watched / plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hub", help="a GPT-2-small-shape offline hub (written if empty)")
    parser.add_argument("--delay", type=float, default=0.2, help="seconds each fake Neuronpedia answer takes")
    parser.add_argument("--tokens", type=int, default=60)
    args = parser.parse_args()
    print(host_line())
    use_offline_hub(args.hub, "axon-bench-hub-")

    from neuronpedia_fake import FakeNeuronpedia

    names = labels()
    by_text = sorted(names, key=str)  # the export's batches are ordered by index as text
    batches = [[(i, names[i]) for i in by_text[b:b + 1024]] for b in range(0, D_SAE, 1024)]
    with FakeNeuronpedia(labels={(NP, i): d for i, d in names.items()}, batches={NP: batches}) as fake:
        fake.mode, fake.delay = "slow", args.delay
        work = Path(tempfile.mkdtemp(prefix="axon-concepts-"))
        os.environ.update({"AXON_LABEL_CACHE": str(work / "labels.sqlite"), "AXON_NEURONPEDIA_URL": fake.url,
                           "AXON_NEURONPEDIA_DATASETS_URL": fake.datasets_url, "AXON_NEURONPEDIA_RATE": "5"})

        from axon_core.generation import GenerationSettings
        from axon_core.labels import fallback_label
        from axon_core.page.run import Frame, run_frames
        from axon_core.page.services import Services

        all_local: list[float] = []

        def watch(cache: Path) -> None:  # when the cache file holds every label (read beside the app)
            import sqlite3
            while time.perf_counter() - t0 < 600:
                try:
                    con = sqlite3.connect(f"file:{cache}?mode=ro", uri=True, timeout=1)
                    n = con.execute("SELECT count(*) FROM labels WHERE np_id = ? AND label IS NOT NULL",
                                    (NP,)).fetchone()[0]
                    con.close()
                    if n >= D_SAE:
                        all_local.append(time.perf_counter() - t0)
                        return
                except Exception:  # noqa: BLE001 - not created yet
                    pass
                time.sleep(0.05)

        import threading
        t0 = time.perf_counter()
        threading.Thread(target=watch, args=(work / "labels.sqlite",), daemon=True).start()
        services = Services.start()
        started_s = time.perf_counter() - t0
        print(f"Services.start: {started_s:.1f} s; bulk {services.labels.bulk_state(NP)}")

        d = GenerationSettings()
        last = None
        t_run = time.perf_counter()
        for out in run_frames(services, PROMPT, "gpt2-small", "gpt2-small-res-jb", "blocks.8.hook_resid_pre",
                              d.temperature, d.top_k, d.top_p, d.repetition_penalty, args.tokens, d.seed,
                              d.feature_k, d.activation_threshold):
            if isinstance(out, Frame) and out.run is not None:
                last = out
        run_s = time.perf_counter() - t_run
        run = last.run
        fig = run.figure()
        named = [int(a["name"]) for a in fig["layout"]["scene"]["annotations"] if a["name"].isdigit()]
        rows = [r["feature"] for r in run.table()]
        shown = named + rows
        named_n = sum(run.label(i) != fallback_label(i) for i in shown)
        pct = 100.0 * named_n / max(1, len(shown))
        step_ms = run.ms_per_token() or float("nan")
        one_by_one = fake.count("/api/feature/")
        print(f"first run: {len(run.steps)} steps in {run_s:.1f} s; {named_n}/{len(shown)} names "
              f"({len(named)} scene, {len(rows)} table); {one_by_one} one-by-one label requests")

        while services.labels.bulk_state(NP) not in ("done", "failed") or not all_local:
            time.sleep(0.05)
            if time.perf_counter() - t0 > 600:
                break
        bulk_s = all_local[0] if all_local else float("nan")
        state = services.labels.bulk_state(NP)
        local = services.labels.cached_count(NP)
        print(f"bulk: {state}, {local} labels local after {bulk_s:.1f} s "
              f"({fake.count('/datasets/')} bucket requests)")
        if state != "done" or local < D_SAE:
            bulk_s = float("nan")

        for q in QUERIES:
            services.labels.search([NP], q)  # warm
        times = []
        for _ in range(20):
            for q in QUERIES:
                t = time.perf_counter()
                hits = services.labels.search([NP], q, 20)
                times.append(time.perf_counter() - t)
        search_ms = 1e3 * statistics.median(times)
        print(f"search: median {search_ms:.2f} ms, max {1e3 * max(times):.2f} ms over {len(times)} queries; "
              f"'capital' -> {len(services.labels.search([NP], 'capital'))} hits, last query {len(hits)}")
        pair = services.pairs.get("gpt2-small-res-jb", "blocks.8.hook_resid_pre")
        fired = sorted({f.index for s in run.steps for f in s.features})
        plain_ms, watch_ms, ratio = watch_cost(pair, GenerationSettings(max_new_tokens=args.tokens), fired)
        print(f"watch: side by side, plain {plain_ms:.1f} ms/token, watching 16 {watch_ms:.1f} ms/token "
              f"(ratio {ratio:.3f}; target <= 1.05)")
        services.engine.close()
        services.labels.close()
    print(f"concepts: bulk_s={bulk_s:.1f} first_run_named_pct={pct:.0f} step_ms={step_ms:.1f} "
          f"step_watch16_ms={watch_ms:.1f} watch_ratio={ratio:.3f} search_ms={search_ms:.2f}")


if __name__ == "__main__":
    main()
