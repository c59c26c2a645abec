"""The real Stop button, pressed in Chromium during a run, a steered run and a link's autorun.

tests/test_hardening.py checks the wiring statically (every event that streams
a run is in a Stop ``cancels=[...]`` list); this presses the button itself, so
that an event that Stop does not reach in the page (left out of a list, or a
list the page does not send) fails here.

On the tiny offline hub a 200-token run ends on the server before the page
shows it running, so this module's own app server paces its engine
(``AXON_STEP_DELAY``: a sleep after each new token) and never replays a run
(``AXON_REPLAY_MB=0``). Every case: wait until the page shows the run streaming
with a few tokens, click Stop, then decide on counts only: the server's run
(``/engine_stats``) was cancelled, at most one token after its last viewer
left, short of the tokens asked for; the page's token count is short of them
too and the same over several polls of the server after the run ended; and a
new run after it streams tokens (and is stopped the same way).
"""

from __future__ import annotations

import urllib.parse

import pytest

import browser_kit as kit
from browser_kit import Watched
from polling import wait_for

MAX = 200  # tokens asked for: at STEP_DELAY a run lasts ~20 s (a steered one ~40 s: two runs in turns)
STEP_DELAY = "0.1"
STEERING = "Steering (feature:coefficient, …; coefficients in activation units)"
STATE = "(() => { const b = document.querySelector('#axon-status [data-state]'); return b && b.dataset.state; })()"
# the main text's tokens (the first .axon-text; a steered run's comparison panel has two more)
GENERATED = "(() => { const t = document.querySelector('.axon-text'); return t ? t.querySelectorAll('.tok.gen').length : 0; })()"
PROMPT_TOKENS = "(() => { const t = document.querySelector('.axon-text'); return t ? t.querySelectorAll('.tok:not(.gen)').length : 0; })()"
SHOWN = 3  # tokens the page shows streaming before Stop is pressed
SAME_FOR = 5  # server polls between the two reads of the page's token count


@pytest.fixture(scope="module")
def app(offline_hub, tmp_path_factory):
    """``python app.py`` paced to ~10 tokens a second, no replays."""
    from app_server import AppServer
    from neuronpedia_fake import FakeNeuronpedia

    kit.require_browser()
    with FakeNeuronpedia(labels={(kit.NP_ID, i): kit.label_of(i) for i in range(1024)}) as fake:
        env = {**kit.APP_ENV, "AXON_STEP_DELAY": STEP_DELAY, "AXON_REPLAY_MB": "0"}
        with AppServer(offline_hub, neuronpedia=fake, log_dir=tmp_path_factory.mktemp("stop-app"), env=env) as server:
            server.stats = server.client()
            yield server
            assert "Traceback" not in server.log_text(), server.log_text()[-3000:]


def runs(app) -> list[dict]:
    return app.stats.predict(api_name="/engine_stats")["runs"]


def known_ids(app) -> set[str]:
    return {r["id"] for r in runs(app)}


def new_runs(app, known: set[str]) -> list[dict]:
    return [r for r in runs(app) if r["id"] not in known]


def wait_streaming(page, app, known: set[str], prompt: str, n_runs: int = 1) -> list[dict]:
    """Until the server has the new run(s) running and the page shows the run of ``prompt``
    streaming with SHOWN tokens (a stopped run's last frame stays on the page, its status
    line still "running": each case's prompt is its own)."""
    fresh: list[dict] = []

    def running():
        fresh[:] = new_runs(app, known)
        return len(fresh) >= n_runs and all(r["state"] == "running" for r in fresh)

    assert wait_for(running, timeout=60, interval=0.05), fresh
    page.wait_for_function(f"([p, n]) => {STATE} === 'running' && {GENERATED} >= n"
                           " && document.querySelector('.axon-text').textContent.startsWith(p)", arg=[prompt, SHOWN])
    return fresh


def press_stop_and_check(w: Watched, app, known: set[str], prompt: str, n_runs: int = 1) -> dict:
    """Press Stop during the run of ``prompt``; check it stopped, on the server's and the page's counts."""
    page = w.page
    wait_streaming(page, app, known, prompt, n_runs)
    shown_at_press = page.evaluate(GENERATED)
    page.get_by_role("button", name="Stop", exact=True).click()
    ended: list[dict] = []

    def finished():  # the run(s) this press was for, once the engine no longer steps them
        ended[:] = new_runs(app, known)
        return len(ended) >= n_runs and all(r["state"] not in ("queued", "running") for r in ended)

    # a generous bound that only ends a hang: a run Stop missed goes on to its end (~20-40 s here)
    assert wait_for(finished, timeout=120, interval=0.05), ended
    prompt_tokens = page.evaluate(PROMPT_TOKENS)
    shown = page.evaluate(GENERATED)
    for _ in range(SAME_FOR):  # more reads of the server; then the page again
        again = new_runs(app, known)
    shown_later = page.evaluate(GENERATED)
    print(f"\nStop pressed at {shown_at_press} tokens shown: server {[(r['state'], r['steps'], r['steps_at_release']) for r in ended]}, "
          f"page {shown} → {shown_later} tokens, status {page.evaluate(STATE)!r}")
    for r in ended:
        # cancelled by the engine at its next turn after the last viewer left (not done, not timed out)
        assert r["state"] == "cancelled", r
        assert r["steps_at_release"] is not None and r["steps_at_release"] <= r["steps"] <= r["steps_at_release"] + 1, r
        assert r["steps"] < prompt_tokens + MAX, r  # short of the tokens asked for
    assert [(r["id"], r["state"], r["steps"]) for r in again] == [(r["id"], r["state"], r["steps"]) for r in ended]
    assert SHOWN <= shown < MAX, shown
    assert shown_later == shown, (shown, shown_later)  # the page's text no longer grows
    assert page.evaluate(STATE) == "stopped"  # the status line says so (it held the run's last frame)
    assert shown <= ended[0]["steps"] - prompt_tokens, (shown, ended[0])  # it showed no more than was computed
    known.update(r["id"] for r in ended)
    return ended[0]


def generate_again_and_stop(w: Watched, app, known: set[str], prompt: str) -> None:
    """A new run after a Stop streams tokens (checked and stopped as any run)."""
    page = w.page
    page.locator("textarea").first.fill(prompt)
    page.get_by_role("button", name="Generate", exact=True).click()
    press_stop_and_check(w, app, known, prompt)


@pytest.fixture(scope="module")
def page(app, browser):
    """One page for the Generate and Steer cases: its link sets 200 tokens (no autorun)."""
    w = Watched(browser, app.url + "?" + urllib.parse.urlencode({"prompt": "A run that Stop ends", "max_tokens": MAX,
                                                                  "seed": 2}))
    w.settled("A run that Stop ends")
    yield w
    w.close()


def test_stop_ends_a_run_started_by_generate(page, app):
    known = known_ids(app)
    page.page.get_by_role("button", name="Generate", exact=True).click()
    press_stop_and_check(page, app, known, "A run that Stop ends")
    generate_again_and_stop(page, app, known, "A new run after Stop")
    assert page.clean(), (page.dialogs, page.errors)


def test_stop_ends_a_steered_run_and_its_plain_twin(page, app):
    known = known_ids(app)
    p = page.page
    prompt = "A steered run that Stop ends"
    p.locator("textarea").first.fill(prompt)
    p.get_by_label(STEERING).fill("5:8")
    p.get_by_role("button", name="Steer (same prompt and seed)").click()
    press_stop_and_check(page, app, known, prompt, n_runs=2)  # the steered run and the plain one beside it
    p.get_by_label(STEERING).fill("")
    generate_again_and_stop(page, app, known, "A plain run after a stopped steered one")
    assert page.clean(), (page.dialogs, page.errors)


def test_stop_ends_a_links_autorun(app, browser):
    known = known_ids(app)
    query = {"prompt": "A link that runs by itself until Stop", "max_tokens": MAX, "seed": 9, "autorun": 1}
    with Watched(browser, app.url + "?" + urllib.parse.urlencode(query)) as w:
        press_stop_and_check(w, app, known, query["prompt"])
        generate_again_and_stop(w, app, known, "A run after the stopped link")
        assert w.clean(), (w.dialogs, w.errors)
