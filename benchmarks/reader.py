"""What the reader's browser pays during a live run (issue 26).

``python app.py`` on the GPT-2-small-shape offline hub (random weights, real
names), Neuronpedia stood in for by a local fake that knows every label and
answers in 200 ms, an empty label cache. Headless Chromium (software WebGL)
opens an autorun link of ``--tokens`` new tokens and, while the run streams,
measures in the page:

- ``fps``: graph states the player drew per second (``window.__axonFrames``),
  from the first drawn frame to the run's end;
- ``longtask``: the share of that time the main thread spent in long tasks
  (PerformanceObserver "longtask", tasks over 50 ms);
- ``tap_p75_ms``: a tap (mouse down/up on the page's margin) every 400 ms; each
  tap's Event Timing duration (input delay + handlers + the next paint; taps
  under Event Timing's 16-ms floor count as 16);
- ``kb_s``: bytes received over the network per second (CDP
  ``Network.dataReceived``, encoded lengths: what a metered connection pays).

As a laptop (1280×800) and as a phone (390×844, CDP
``Emulation.setCPUThrottlingRate`` 4). Each opens the link twice: first the run
is computed while the page watches (server and browser share this machine's
cores, 2 here: line ``reader_shared_cores``), then the same link again, which
the server replays from memory at the pace the run was computed, so the browser
has the cores to itself, as with the server on other cores (the last line,
``reader``). The server's own time is in the app's status line, printed too. Screenshots at 1280, 720 and 390 px wide after the run are written
to ``--shots`` (look at them).

Usage: ``python benchmarks/reader.py [--hub DIR] [--tokens 80] [--shots DIR]``. Last line:
``reader: laptop_fps=… laptop_longtask=… laptop_tap_p75_ms=… laptop_kb_s=… phone_fps=… phone_longtask=… phone_tap_p75_ms=… phone_kb_s=…``
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import host_line, use_offline_hub  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--enable-unsafe-swiftshader"]
PROMPT = "The capital of France is"

# installed before the page's own scripts: long tasks and tap timings from the start
OBSERVE = """
window.__reader = {long: [], taps: []};
new PerformanceObserver((l) => { for (const e of l.getEntries()) window.__reader.long.push([e.startTime, e.duration]); })
  .observe({type: 'longtask', buffered: true});
new PerformanceObserver((l) => { for (const e of l.getEntries())
    if (e.name === 'pointerdown' || e.name === 'mousedown' || e.name === 'pointerup' || e.name === 'mouseup' || e.name === 'click')
      window.__reader.taps.push([e.startTime, e.duration, e.name]); })
  .observe({type: 'event', durationThreshold: 16, buffered: true});
"""
STATUS = "(document.querySelector('#axon-status [data-state]') || {}).dataset"


def one_run(page, received: list) -> dict:
    """Measure from the first drawn graph frame to the run's end."""
    page.wait_for_function("window.__axonFrames > 0 && window.__axonGraphCounts && window.__axonGraphCounts.received > 0", timeout=300_000)
    t0, frames0 = time.monotonic(), page.evaluate("window.__axonFrames")
    perf0 = page.evaluate("performance.now()")
    taps = 0
    box = {"x": 4, "y": 4, "height": 8}  # a tap on the page's margin, top left: what a reader's tap waits for
    while True:
        state = page.evaluate(f"({STATUS}).state")
        if state in ("done", "failed"):
            break
        if box:
            page.mouse.move(box["x"] + 20, box["y"] + box["height"] / 2)
            page.mouse.down()
            page.mouse.up()
            taps += 1
        page.wait_for_timeout(400)
        if time.monotonic() - t0 > 600:
            break
    t1, frames1 = time.monotonic(), page.evaluate("window.__axonFrames")
    perf1 = page.evaluate("performance.now()")
    data = page.evaluate("window.__reader")
    status = page.evaluate("(document.querySelector('#axon-status') || {}).innerText || ''")
    span = max(1e-3, perf1 - perf0)
    long_ms = sum(max(0.0, min(s + d, perf1) - max(s, perf0)) for s, d in data["long"])
    by_tap: dict[int, float] = {}
    for s, d, _ in data["taps"]:
        if perf0 <= s <= perf1:
            k = int((s - perf0) // 400)  # one tap per 400-ms slot
            by_tap[k] = max(by_tap.get(k, 0.0), d)
    durations = sorted(list(by_tap.values()) + [16.0] * max(0, taps - len(by_tap)))
    p75 = durations[int(0.75 * (len(durations) - 1))] if durations else float("nan")
    kb = sum(n for t, n in received if t0 <= t <= t1) / 1024
    return {"fps": (frames1 - frames0) / (t1 - t0), "longtask": long_ms / span, "tap_p75_ms": p75,
           "kb_s": kb / (t1 - t0), "seconds": t1 - t0, "taps": taps, "status": " ".join(status.split())[:160]}


def measure(browser, url: str, width: int, height: int, throttle: float, tokens: int, shots: Path | None,
            tag: str) -> dict:
    ctx = browser.new_context(viewport={"width": width, "height": height})
    page = ctx.new_page()
    page.add_init_script(OBSERVE)
    cdp = ctx.new_cdp_session(page)
    cdp.send("Network.enable")
    received = []
    cdp.on("Network.dataReceived", lambda e: received.append((time.monotonic(), e.get("encodedDataLength") or e.get("dataLength", 0))))
    if throttle > 1:
        cdp.send("Emulation.setCPUThrottlingRate", {"rate": throttle})
    link = f"{url}?prompt={PROMPT.replace(' ', '+')}&max_tokens={tokens}&seed=3&autorun=1"
    out = {}
    # first the run computed while the page watches (server and browser share the cores), then
    # the same link again: an identical request is replayed from the server's memory at the pace
    # it was computed, so the browser has the cores to itself (as with the server elsewhere)
    for flavour in ("shared", "idle"):
        page.goto(link, wait_until="domcontentloaded", timeout=180_000)
        out[flavour] = one_run(page, received)
    if shots is not None:
        page.wait_for_timeout(1500)
        for w, h in ((1280, 800), (720, 900), (390, 844)):
            page.set_viewport_size({"width": w, "height": h})
            page.wait_for_timeout(800)
            page.screenshot(path=str(shots / f"{tag}-{w}.png"))
    ctx.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hub", help="a GPT-2-small-shape offline hub (written if empty)")
    ap.add_argument("--tokens", type=int, default=80)
    ap.add_argument("--shots", default=None, help="folder for the screenshots (default: a temp folder)")
    ap.add_argument("--only", choices=("laptop", "phone"), default=None)
    args = ap.parse_args()
    print(host_line())
    hub = use_offline_hub(args.hub, "axon-bench-hub-")

    from playwright.sync_api import sync_playwright

    from app_server import AppServer
    from neuronpedia_fake import FakeNeuronpedia
    from concepts import NP, labels

    shots = Path(args.shots or tempfile.mkdtemp(prefix="axon-reader-"))
    shots.mkdir(parents=True, exist_ok=True)
    names = labels()
    by_text = sorted(names, key=str)  # the bulk export's batches, as concepts.py serves them
    batches = [[(i, names[i]) for i in by_text[b:b + 1024]] for b in range(0, len(names), 1024)]
    with FakeNeuronpedia(labels={(NP, i): d for i, d in names.items()}, batches={NP: batches}) as fake:
        fake.mode, fake.delay = "slow", 0.2
        env = {"AXON_NEURONPEDIA_RATE": "5"}  # as a Space starts: empty label cache, the bulk fetch in the background
        with AppServer(Path(hub or os.environ["HF_HUB_CACHE"]), neuronpedia=fake, env=env,
                       startup_timeout=300) as app, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            results = {}
            for name, (w, h, rate) in {"laptop": (1280, 800, 1), "phone": (390, 844, 4)}.items():
                if args.only and name != args.only:
                    continue
                results[name] = both = measure(browser, app.url, w, h, rate, args.tokens,
                                               shots if name == "laptop" else None, name)
                for flavour, r in both.items():
                    print(f"{name} ({w}x{h}, CPU {rate}x, server {'computing' if flavour == 'shared' else 'replaying'}): "
                          f"{r['fps']:.1f} frames/s drawn, {100 * r['longtask']:.0f}% in long "
                          f"tasks, taps p75 {r['tap_p75_ms']:.0f} ms ({r['taps']} taps), {r['kb_s']:.0f} KB/s over "
                          f"{r['seconds']:.1f} s; status: {r['status']}")
            browser.close()
    print(f"screenshots in {shots}")
    for flavour, tag in (("shared", "reader_shared_cores"), ("idle", "reader")):
        fields = []
        for name in ("laptop", "phone"):
            r = results.get(name, {}).get(flavour)
            if r is None:
                continue
            fields += [f"{name}_fps={r['fps']:.1f}", f"{name}_longtask={r['longtask']:.2f}",
                       f"{name}_tap_p75_ms={r['tap_p75_ms']:.0f}", f"{name}_kb_s={r['kb_s']:.0f}"]
        print(f"{tag}: " + " ".join(fields))


if __name__ == "__main__":
    main()
