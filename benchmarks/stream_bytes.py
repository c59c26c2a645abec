"""What each page output costs on the wire during a live run (issue 26's ``kb_s``).

``python app.py`` on the GPT-2-small-shape offline hub, a local fake Neuronpedia,
headless Chromium opening an autorun link of ``--tokens`` new tokens at
1280×800. The page's ``fetch`` is wrapped before Gradio's scripts run, so the
queue's event stream is read as the page receives it (Gradio 6 streams with
fetch, not EventSource, so CDP's event-source messages stay empty). Each
``process_generating`` message is split by output, and its bytes (JSON of the
output's update: an ``append`` of new text or a ``replace`` of the whole value)
are summed per output, during the run (up to the frame whose status says done)
and after it (a run's label tail and the completion message).

Usage: ``python benchmarks/stream_bytes.py [--hub DIR] [--tokens 80]``. Last line:
``stream_bytes: run_kb=… tail_kb=… messages=… text_kb=… graph_kb=… table_kb=… status_kb=… notes_kb=…``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import host_line, use_offline_hub  # noqa: E402
from reader import ARGS, CHROMIUM, PROMPT, STATUS  # noqa: E402  (the same browser and link as the reader benchmark)

# the page's outputs of a run, in app.py's order (page_outputs)
OUTPUTS = ["text", "graph", "table", "status", "run_state", "json_btn", "html_btn", "compare", "scrub", "notes"]
TEE = """
window.__axonStream = [];
const plainFetch = window.fetch;
window.fetch = async function (...args) {
  const response = await plainFetch.apply(this, args);
  const url = String((args[0] && args[0].url) || args[0]);
  if (url.includes('queue/data')) {
    const reader = response.clone().body.getReader(), text = new TextDecoder();
    (async () => { for (;;) { const {done, value} = await reader.read(); if (done) break;
                               window.__axonStream.push(text.decode(value, {stream: true})); } })();
  }
  return response;
};
"""


def split(messages: list[dict]) -> tuple[Counter, Counter]:
    """Bytes per output during the run (until status says done) and after it."""
    during, after, done = Counter(), Counter(), False
    for m in messages:
        data = (m.get("output") or {}).get("data")
        if m.get("msg") != "process_generating" or not isinstance(data, list):
            continue
        bucket = after if done else during
        for i, value in enumerate(data[:len(OUTPUTS)]):
            bucket[OUTPUTS[i]] += len(json.dumps(value))
        if len(data) > 3 and 'data-state=\\"done\\"' in json.dumps(data[3]):
            done = True
    return during, after


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hub", help="a GPT-2-small-shape offline hub (written if empty)")
    ap.add_argument("--tokens", type=int, default=80)
    args = ap.parse_args()
    print(host_line())
    hub = use_offline_hub(args.hub, "axon-bench-hub-")

    from playwright.sync_api import sync_playwright

    from app_server import AppServer
    from concepts import NP, labels
    from neuronpedia_fake import FakeNeuronpedia

    names = labels()
    with FakeNeuronpedia(labels={(NP, i): d for i, d in names.items()}) as fake, \
            AppServer(Path(hub or os.environ["HF_HUB_CACHE"]), neuronpedia=fake, env={}, startup_timeout=300) as app, \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
        page.add_init_script(TEE)
        page.goto(f"{app.url}?prompt={PROMPT.replace(' ', '+')}&max_tokens={args.tokens}&seed=3&autorun=1")
        page.wait_for_function(f"(({STATUS}) || {{}}).state === 'done'", timeout=300_000)
        page.wait_for_timeout(4000)  # the label tail and the completion message
        text = "".join(page.evaluate("window.__axonStream"))
        browser.close()
    messages = []
    for line in text.split("\n"):
        if line.startswith("data: "):
            try:
                messages.append(json.loads(line[6:]))
            except ValueError:
                pass
    during, after = split(messages)
    for name in OUTPUTS:
        if during[name] or after[name]:
            print(f"{name:>10}: {during[name] / 1024:7.1f} KB during the run, {after[name] / 1024:7.1f} KB after it")
    kb = {k: during[k] / 1024 for k in ("text", "graph", "table", "status", "notes")}
    print(f"stream_bytes: run_kb={sum(during.values()) / 1024:.0f} tail_kb={sum(after.values()) / 1024:.0f} "
          f"messages={len(messages)} " + " ".join(f"{k}_kb={v:.0f}" for k, v in kb.items()))


if __name__ == "__main__":
    main()
