"""A crowd at once, as strangers see it: ``python app.py`` on an offline hub
(GPT-2-small shape), measured through ``gradio_client`` only.

1. one session alone: generated tokens per second;
2. 8 sessions with different prompts at once: aggregate tokens per second, the
   95th-percentile time to a session's first frame, the longest gap between
   two frames of one session;
3. 50 sessions opening the same share-link request: how many generations the
   server computed (its ``/engine_stats`` counters);
4. many short runs from many sessions: the server's resident memory and its
   temp folders' size, growth per 100 runs (after a warm-up).

Usage: ``python benchmarks/crowd.py [--hub DIR] [--runs 500 --sessions 100]``
(writes a GPT-2-small-shape hub first when ``--hub`` has none, ~20 s).
Last line: ``crowd: solo_tok_s=… tok_s_8=… gain_8=… first_frame_p95_8_s=…
same_link_50_computed=… rss_mb_per_100_runs=… disk_mb_per_100_runs=…``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import host_line, running_app  # noqa: E402

SETTINGS = dict(temperature=0.8, top_k=50, top_p=0.95, repetition_penalty=1.1, seed=0, feature_k=12, threshold=0.1)
PROMPTS = ["The capital of France is", "def fibonacci(n):", "In 1969, the first person to walk on the Moon was",
           "She opened the letter and began to cry because", "The recipe calls for two cups of",
           "According to the latest report, the economy", "Once upon a time, in a small village,",
           "The best way to learn a new language is"]


def request(prompt: str, tokens: int, seed: int = 0) -> list:
    s = SETTINGS
    return [prompt, "gpt2-small", "gpt2-small-res-jb", "blocks.8.hook_resid_pre", s["temperature"], s["top_k"],
            s["top_p"], s["repetition_penalty"], tokens, seed, s["feature_k"], s["threshold"], "", "npmi"]


def watch(client, args: list) -> dict:
    """Submit one run and record when each frame arrived; the run JSON at the end."""
    t0 = time.monotonic()
    job = client.submit(*args, api_name="/generate")
    seen, times = 0, []
    while not job.done():
        n = len(job.outputs())
        if n > seen:
            times += [time.monotonic() - t0] * (n - seen)
            seen = n
        time.sleep(0.005)
    run = job.result()[4]
    end = time.monotonic() - t0
    new = sum(not t["is_prompt"] for t in run["tokens"]) if isinstance(run, dict) else 0
    gaps = [b - a for a, b in zip(times, times[1:])]
    return {"first": times[0] if times else end, "end": end, "new_tokens": new, "max_gap": max(gaps, default=0.0),
            "run": run}


def dir_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hub", default="/tmp/axon-hub-full")
    ap.add_argument("--tokens", type=int, default=35, help="new tokens per run (solo and 8 sessions)")
    ap.add_argument("--runs", type=int, default=500, help="runs for the memory and disk part")
    ap.add_argument("--sessions", type=int, default=100, help="sessions for the memory and disk part")
    ap.add_argument("--mem-tokens", type=int, default=4, help="new tokens per run of the memory part")
    a = ap.parse_args()
    print(host_line(), flush=True)
    hub = Path(a.hub)
    if not (hub / "AXON_OFFLINE_HUB.json").exists():
        from scripts.offline_hub import write_offline_hub

        write_offline_hub(hub, "gpt2-small")
    work = Path(tempfile.mkdtemp(prefix="axon-crowd-"))
    tmp = work / "tmp"
    with running_app(hub, work) as (proc, url):
        from gradio_client import Client

        def client():
            return Client(url, verbose=False, download_files=False)

        def stats():
            return client().predict(api_name="/engine_stats")

        # warm-up (first forward, first frame)
        watch(client(), request("Warm up the engine", 8, seed=99))

        # 1. one session alone
        solo = [watch(client(), request(p, a.tokens, seed=1)) for p in PROMPTS[:2]]
        solo_tok_s = statistics.median(r["new_tokens"] / r["end"] for r in solo)
        print(f"solo: {solo_tok_s:.1f} tokens/s ({[round(r['end'], 2) for r in solo]} s per run, "
              f"first frame {[round(r['first'], 2) for r in solo]} s)")

        # 2. eight sessions at once, different prompts
        clients = [client() for _ in PROMPTS]
        results: list[dict] = [None] * len(PROMPTS)
        barrier = threading.Barrier(len(PROMPTS))

        def one(i):
            barrier.wait()
            results[i] = watch(clients[i], request(PROMPTS[i], a.tokens, seed=2))

        t0 = time.monotonic()
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(PROMPTS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        tok_s_8 = sum(r["new_tokens"] for r in results) / wall
        firsts = sorted(r["first"] for r in results)
        p95 = firsts[min(len(firsts) - 1, int(round(0.95 * (len(firsts) - 1))))]
        batching = stats()["batching"]
        print(f"8 sessions: {tok_s_8:.1f} tokens/s in all ({wall:.1f} s); first frame p95 {p95:.2f} s "
              f"(all: {[round(f, 2) for f in firsts]}); longest gap between frames "
              f"{max(r['max_gap'] for r in results):.2f} s; engine's batching table {batching}")

        # 3. fifty sessions, one share link
        before = stats()["computed"]
        link = request("The same link, opened by fifty readers", a.tokens, seed=7)
        same = [None] * 50
        clients = [client() for _ in range(50)]

        def reader(i):
            same[i] = watch(clients[i], link)

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
            time.sleep(0.02)
        for t in threads:
            t.join()
        computed = stats()["computed"] - before
        identical = all(r["run"]["tokens"] == same[0]["run"]["tokens"] for r in same)
        after = stats()
        print(f"50 sessions, one link: {computed} generation(s) computed; attached {after['attached']}, "
              f"replayed {after['replayed']}; all 50 runs identical: {identical}")

        # 4. memory and disk over many short runs from many sessions
        me = psutil.Process(proc.pid)
        pool = [client() for _ in range(a.sessions)]
        counter = iter(range(10**9))
        lock = threading.Lock()

        def batch(n):
            def worker():
                while True:
                    with lock:
                        i = next(counter)
                        if i >= n_end:
                            return
                    watch(pool[i % len(pool)], request(f"Run number {i} of the crowd", a.mem_tokens, seed=i))

            threads = [threading.Thread(target=worker) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        warm = min(100, a.runs // 5)
        n_end = warm
        batch(warm)
        time.sleep(1.0)
        rss0, disk0 = me.memory_info().rss, dir_size(tmp)
        n_end = warm + a.runs
        t_mem = time.monotonic()
        batch(a.runs)
        time.sleep(1.0)
        rss1, disk1 = me.memory_info().rss, dir_size(tmp)
        per100 = 100.0 / a.runs
        rss_per_100 = (rss1 - rss0) / 2**20 * per100
        disk_per_100 = (disk1 - disk0) / 2**20 * per100
        print(f"{a.runs} runs from {a.sessions} sessions ({time.monotonic() - t_mem:.0f} s, after {warm} warm-up runs):"
              f" RSS {rss0 / 2**20:.0f} -> {rss1 / 2**20:.0f} MB, temp dirs {disk0 / 2**20:.1f} -> "
              f"{disk1 / 2**20:.1f} MB")
        print(f"crowd: solo_tok_s={solo_tok_s:.1f} tok_s_8={tok_s_8:.1f} gain_8={tok_s_8 / solo_tok_s:.2f} "
              f"first_frame_p95_8_s={p95:.2f} same_link_50_computed={computed} "
              f"rss_mb_per_100_runs={rss_per_100:.1f} disk_mb_per_100_runs={disk_per_100:.2f}")


if __name__ == "__main__":
    main()
