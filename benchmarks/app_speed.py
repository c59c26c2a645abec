"""ms/token as a person sees it (the app's status line) against the engine alone,
side by side in one run, on the GPT-2-small-shape offline hub.

Rounds alternate, so a busy neighbour on the machine hits both sides alike:

(a) the engine alone: a fresh process loads the pair, sets torch's threads as
    the app does (by measurement: :meth:`~axon_core.engine.Engine.choose_threads`), and computes the runs
    through :class:`~axon_core.engine.Engine` with nobody viewing them;
(b) the app: ``python app.py``, one ``gradio_client`` session, the same
    requests; the ms/token its status line shows (the engine's median gap
    between this run's tokens, measured inside the app while its view draws,
    Gradio serialises and streams frames, and the client reads them), and the
    frames a second the client received while the run was generating;
(c) the engine alone with torch's default threads (all CPUs), for reference.

The app and the engine alone (a) choose torch's threads by measurement
(:meth:`~axon_core.engine.Engine.choose_threads`); the app's choice, its
start-up timings and its re-checks are printed.

Usage: ``python benchmarks/app_speed.py [--hub DIR] [--rounds 3 --runs 3 --tokens 80]``
Last line: ``app_speed: engine_ms=… app_ms=… ratio=… engine_all_cpus_ms=…
torch_threads=… client_fps=…``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import host_line, running_app, use_offline_hub  # noqa: E402

PROMPTS = ["The capital of France is", "In 1969, the first person to walk on the Moon was",
           "She opened the letter and"]
SAE = ("gpt2-small-res-jb", "blocks.8.hook_resid_pre")
SAMPLING = dict(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, feature_k=12, threshold=0.1)


def engine_only(a) -> None:
    """Mode (a)/(c), in its own process: print the runs' ms/token as JSON."""
    use_offline_hub(a.hub, "axon-bench-hub-")
    from axon_core.engine import Engine, share_cpus
    from axon_core.generation import GenerationSettings
    from axon_core.loading import PairCache

    share_cpus("cpu", a.threads)
    pair = PairCache(device="cpu").get(*SAE)
    engine = Engine()
    threads = engine.choose_threads(pair, a.threads)  # measured, as the app does (or the count asked for)
    s = SAMPLING
    out = []
    for i, prompt in enumerate(["Warm up the engine"] + PROMPTS[:a.runs]):
        settings = GenerationSettings(max_new_tokens=a.tokens if i else 20, seed=a.seed + i - 1, temperature=s["temperature"],
                                      top_k=s["top_k"], top_p=s["top_p"], repetition_penalty=s["repetition_penalty"],
                                      feature_k=s["feature_k"], activation_threshold=s["threshold"])
        run = engine.submit(pair, prompt, settings)
        while not run.finished:
            run.wait(len(run.steps), 0.5)
        engine.release(run)
        if i:
            out.append(run.ms_per_token())
    print(json.dumps({"threads": threads, "ms": out}))


def engine_alone(a, threads: str, seed: int) -> tuple[int, list[float]]:
    cmd = [sys.executable, __file__, "--engine-only", "--hub", a.hub, "--threads", threads,
           "--runs", str(a.runs), "--tokens", str(a.tokens), "--seed", str(seed)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    got = json.loads(res.stdout.strip().splitlines()[-1])
    return got["threads"], got["ms"]


def app_runs(client, a, seed: int) -> tuple[list[float], list[float]]:
    """The status line's ms/token of each run, and the frames a second the client got."""
    s = SAMPLING
    ms, fps = [], []
    for i, prompt in enumerate(PROMPTS[:a.runs]):
        job = client.submit(prompt, "gpt2-small", *SAE, s["temperature"], s["top_k"], s["top_p"],
                            s["repetition_penalty"], a.tokens, seed + i, s["feature_k"], s["threshold"], "", "npmi", [],
                            api_name="/generate")
        seen, times = 0, []
        while not job.done():
            n = len(job.outputs())
            if n > seen:
                times += [time.monotonic()] * (n - seen)
                seen = n
            time.sleep(0.02)  # a client polling harder takes the server's core
        status = job.result()[3]
        ms.append(float(re.search(r"(\d+) ms/token", status).group(1)))
        live = times[:-1]  # the last output is the finished run's
        if len(live) > 2:
            fps.append((len(live) - 1) / (live[-1] - live[0]))
    return ms, fps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hub", default=str(Path(tempfile.gettempdir()) / "axon-hub-full"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=3, help="runs per round and side (at most 3 prompts)")
    ap.add_argument("--tokens", type=int, default=80)
    ap.add_argument("--engine-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", default="", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.engine_only:
        engine_only(a)
        return
    print(host_line(), flush=True)
    hub = use_offline_hub(a.hub, "axon-bench-hub-")
    a.hub = str(hub)
    engine, engine_all, app, fps = [], [], [], []
    with running_app(hub, Path(tempfile.mkdtemp(prefix="axon-app-speed-"))) as (_, url):
        from gradio_client import Client

        client = Client(url, verbose=False, download_files=False)
        client.predict("Warm up the app", "gpt2-small", *SAE, 1.0, 0, 1.0, 1.0, 20, 0, 12, 0.1, "", "npmi", [],
                       api_name="/generate")
        stats = client.predict(api_name="/engine_stats")
        chosen = stats["threads"]
        print(f"app's torch threads: {chosen['chosen']} ({chosen['source']}; start-up ms/step by count "
              f"{chosen['startup_ms']}); encode paths {[(e['hook'], e['path'], e['ms']) for e in stats['encode']]}",
              flush=True)
        for r in range(a.rounds):
            seed = 1 + 100 * r  # every round new runs: a repeated request would be a replay
            alone_threads, ms = engine_alone(a, "", seed)
            engine += ms
            got, got_fps = app_runs(client, a, seed)
            app += got
            fps += got_fps
            all_threads, ms = engine_alone(a, str(os.cpu_count() or 1), seed)
            engine_all += ms
            print(f"round {r + 1}: engine alone ({alone_threads} threads, measured) "
                  f"{[round(x, 1) for x in engine[-a.runs:]]} ms/token; "
                  f"app's status line {got} ms/token at {[round(f, 1) for f in got_fps]} frames/s; "
                  f"engine alone on {all_threads} threads {[round(x, 1) for x in ms]}", flush=True)
        final = client.predict(api_name="/engine_stats")["threads"]
    e, p, e_all = statistics.median(engine), statistics.median(app), statistics.median(engine_all)
    print(f"app's torch threads at the end: {final['chosen']} ({final['source']}; re-checks {final['rechecks']}, "
          f"switches {final['switches']}, running means {final['mean_ms']} ms); app / best engine "
          f"{p / min(e, e_all):.2f}", flush=True)
    print(f"app_speed: engine_ms={e:.1f} app_ms={p:.1f} ratio={p / e:.2f} engine_all_cpus_ms={e_all:.1f} "
          f"torch_threads={final['chosen']} client_fps={statistics.median(fps):.1f}")


if __name__ == "__main__":
    main()
