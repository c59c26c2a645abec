"""Replay page sizes and how smoothly a phone-class browser plays one (issue 25).

Real runs on the GPT-2-small shape (offline hub, random weights, real names): a
50- and a 200-token run reading one SAE (``blocks.8.hook_resid_pre``) and a
200-token run reading four (blocks 2, 5, 8, 11), each viewed by a RunSession
that draws a frame every 4 tokens as the live view does, exported, and turned
into replay pages (:func:`axon_core.replay.replay_html`). Labels: the offline
hub has no Neuronpedia, so every feature gets a 45-character label, about the
length of a real explanation (a run with only "Feature N" fallbacks is smaller).

``phone_fps``: the 200-token page (offline flavour, file://) played at 1× in
Chromium at 390×844 with ``Emulation.setCPUThrottlingRate`` 4 (CDP): frames the
player drew per second of play (the run's own pace caps it at its tokens per second,
printed as ``token_rate``).

Usage: ``python benchmarks/replay.py [--hub DIR] [--seconds 12]``. Last line:
``replay: kb_small_50=… kb_small_200=… kb_small_200_4layers=… kb_offline_200=… phone_fps=…``
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import use_offline_hub  # noqa: E402

PROMPT = "In a quiet village by the sea, an old fisherman told"
LAYERS = (2, 5, 8, 11)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


class Labels:
    """45-character labels for every feature (an offline stand-in for Neuronpedia's explanations)."""

    arrivals = 1

    def label(self, np_id, index):
        return f"words about topic {index} in formal writing"[:45].ljust(45, ".")

    def known(self, np_id, index):
        return self.label(np_id, index)

    def request(self, np_id, indices):
        pass


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hub", default=None, help="offline hub with SAEs at blocks 2, 5, 8, 11")
    ap.add_argument("--seconds", type=float, default=12.0, help="seconds of play measured for phone_fps")
    return ap.parse_args()


def run_json(pairs, tokens: int, layers: bool) -> dict:
    import orjson

    from axon_core.generation import GenerationSettings, LayerSae, generate
    from axon_core.session import RunSession

    pair = pairs[8]
    settings = GenerationSettings(max_new_tokens=tokens, temperature=1.0, top_k=0, top_p=1.0,
                                  repetition_penalty=1.0, stop_at_eos=False, seed=0, feature_k=12)
    extra = [pairs[i] for i in LAYERS if i != 8] if layers else []
    meta = {"model": pair.choice.model, "release": pair.choice.release, "sae_id": pair.choice.sae_id,
            "neuronpedia_id": "gpt2-small/8-res-jb", "prompt": PROMPT}
    saes = [LayerSae.of(p) for p in [pair, *extra]] if layers else None
    run = RunSession(meta, settings, Labels(), w_dec=pair.sae.W_dec, saes=saes)
    for i, step in enumerate(generate(pair, PROMPT, settings, extra=extra)):
        run.add(step)
        if i % 4 == 0:
            run.figure()
    run.figure()
    return orjson.loads(orjson.dumps(run.export_json({"axon": "bench"})))


def phone_fps(page: Path, seconds: float) -> tuple[float, float]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=1, is_mobile=True,
                                      has_touch=True)
        tab = context.new_page()
        cdp = context.new_cdp_session(tab)
        cdp.send("Emulation.setCPUThrottlingRate", {"rate": 4})
        tab.set_default_timeout(180_000)
        tab.goto(page.as_uri() + "?autoplay=0")
        tab.wait_for_function("window.__axonReplay && window.__axonReplay.player.idle()")
        before = tab.evaluate("({d: window.__axonReplay.player.stats.drawn, at: window.__axonReplay.player.at})")
        tab.evaluate("window.__axonReplay.seek(-1); window.__axonReplay.play()")
        t0 = time.perf_counter()
        start = tab.evaluate("window.__axonReplay.player.stats.drawn")
        time.sleep(seconds)
        got = tab.evaluate("({d: window.__axonReplay.player.stats.drawn, at: window.__axonReplay.player.at})")
        elapsed = time.perf_counter() - t0
        browser.close()
    del before
    return (got["d"] - start) / elapsed, (got["at"] + 1) / elapsed


def main() -> None:
    args = parse_args()
    use_offline_hub(args.hub, "axon-bench-hub-", layers=LAYERS)
    import orjson

    from axon_core.loading import PairCache
    from axon_core.replay import replay_html

    cache = PairCache(max_saes=len(LAYERS), device="cpu")
    pairs = {i: cache.get("gpt2-small-res-jb", f"blocks.{i}.hook_resid_pre") for i in LAYERS}
    out = Path(tempfile.mkdtemp(prefix="axon-replay-bench-"))
    kb = {}
    for name, tokens, layered in (("50", 50, False), ("200", 200, False), ("200_4layers", 200, True)):
        d = run_json(pairs, tokens, layered)
        t = time.perf_counter()
        small = replay_html(d, small=True).encode()
        build = time.perf_counter() - t
        kb[f"small_{name}"] = len(small) / 1024
        features = len(d["labels"])
        print(f"{name}: {len(d['tokens'])} tokens, {features} features, {len(d['layout']['positions'])} placed, "
              f"run JSON {len(orjson.dumps(d)) / 1024:.0f} KB, small page {len(small) / 1024:.0f} KB (built in {build:.1f} s)")
        (out / f"small_{name}.html").write_bytes(small)
        if name == "200":
            offline = replay_html(d).encode()
            kb["offline_200"] = len(offline) / 1024
            (out / "offline_200.html").write_bytes(offline)
    fps, rate = phone_fps(out / "offline_200.html", args.seconds)
    print(f"phone (390x844, CPU 4x throttled): {fps:.1f} frames/s drawn while tokens arrived at {rate:.1f}/s; pages in {out}")
    print(f"replay: kb_small_50={kb['small_50']:.0f} kb_small_200={kb['small_200']:.0f} "
          f"kb_small_200_4layers={kb['small_200_4layers']:.0f} kb_offline_200={kb['offline_200']:.0f} "
          f"phone_fps={fps:.1f}")


if __name__ == "__main__":
    main()
