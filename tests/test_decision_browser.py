"""The decision strip in a real browser (the session's app server and Chromium,
tests/browser_kit.py): it shows the newest token's candidates while the run
streams, follows the token slider, and a click on a candidate shows what pushed
the choice rather than that one. Hostile labels stay inert in it. Skips (or
fails under CI) like every browser test."""

from __future__ import annotations

import urllib.parse

import pytest

from app_server import ROOT
from browser_kit import SCRUB, Watched

SHOT = ROOT / "out" / "browser" / "decision.png"
# every redraw of the text and the notes under it: [newest token's position, the strip's position, its candidates]
RECORD = """() => { window.__strips = []; const box = document.querySelector('.axon-side');
  new MutationObserver(() => { const t = [...box.querySelectorAll('.axon-text .tok')].pop();
    const s = box.querySelector('.axon-decision');
    window.__strips.push([t ? t.dataset.pos : null, s ? s.dataset.pos : null,
                          s ? s.querySelectorAll('.axon-cand').length : 0]); })
    .observe(box, {childList: true, subtree: true}); }"""
FEATURES = "document.querySelector('.axon-graph')._fullData.find(t => t.name === 'features')"
NEWEST = ("(() => { const t = [...document.querySelectorAll('.axon-text .tok')].pop();"
          " const s = document.querySelector('.axon-decision');"
          " return [t && t.dataset.pos, s && s.dataset.pos, document.querySelectorAll('.axon-decision .axon-cand').length]; })()")


@pytest.mark.timeout(170)
def test_strip_follows_the_run_the_slider_and_a_candidate_click(browser_app, browser):
    query = {"prompt": "The capital of France is", "max_tokens": 120, "seed": 2, "temperature": 1}
    with Watched(browser, browser_app.url + "?" + urllib.parse.urlencode(query), (1280, 800), wait=None) as w:
        page = w.page
        w.settled(query["prompt"])
        page.evaluate(RECORD)
        page.get_by_role("button", name="Generate", exact=True).click()
        page.wait_for_function("document.querySelector('#axon-status [data-state=running]') !== null")
        page.wait_for_function("document.querySelector('#axon-status [data-state=done]') !== null")
        end = page.evaluate(NEWEST)
        assert end[0] == end[1] and end[2] >= 5
        # during the run (the strip is redrawn at the table's cadence, not with every token): every
        # strip drawn is of a token already shown; a generated token's with 5 candidates (6 when the
        # chosen one is not among them); the last one is the newest token's
        drawn = [r for r in page.evaluate("window.__strips") if r[0] is not None and r[1] is not None]
        assert drawn and all(int(r[1]) <= int(r[0]) for r in drawn), drawn
        during = [r for r in drawn if int(r[1]) > 6]
        assert during and all(r[2] >= 5 for r in during), during
        # (whether one is drawn before the end depends on the machine's speed: a tiny model's run may
        # end inside one table interval, so that only the final strip is drawn; not decided here)
        assert drawn[-1][1] == end[0], drawn[-3:]
        assert page.locator(".axon-decision .axon-cand.chosen").count() == 1
        assert "direct path" in page.locator(".axon-decision .dec-flavour").inner_text()
        # the slider: the strip follows it to a generated token
        position = int(end[0]) - 5
        page.locator(f"input[type=range][aria-label='range slider for {SCRUB}']").fill(str(position))
        page.wait_for_function(f"document.querySelector('.axon-decision').dataset.pos === '{position}'")
        assert page.locator(".axon-text .tok.here").get_attribute("data-pos") == str(position)
        assert page.locator(".axon-decision .axon-cand.chosen").count() == 1
        # a click on another candidate shows the pushers against that one
        other = page.locator(".axon-decision .axon-cand:not(.chosen)").nth(2)
        j = other.get_attribute("data-j")
        other.click()
        shown = page.eval_on_selector_all(".axon-decision .dec-push:not(.off)", "els => els.map(e => e.dataset.j)")
        assert shown == [j]
        assert "rather than" in page.locator(".axon-decision .dec-push:not(.off) .dec-vs").inner_text()
        # the gradient flavour for the shown token, on request: against the candidate clicked
        assert page.input_value("#axon-vs-req textarea, #axon-vs-req input") == \
            f"{position}:{other.get_attribute('data-tok')}"
        page.locator("#axon-why").click()
        page.wait_for_function("document.querySelector('.axon-decision .dec-grad') !== null")
        assert "through the later layers" in page.locator(".axon-decision .dec-grad").inner_text()
        shown = page.eval_on_selector_all(".axon-decision .dec-push:not(.off)", "els => els.map(e => e.dataset.j)")
        assert shown == [j]  # the clicked candidate stays chosen across the redraw
        assert page.locator(f".axon-decision .dec-push[data-j='{j}'] .dec-grad").count() == 1  # computed against it
        # the measured flavour, against the same candidate
        page.locator("#axon-measure").click()
        page.wait_for_function("document.querySelector('.axon-decision .dec-push:not(.off) .dec-measured') !== null")
        assert "measured (each feature ablated" in page.locator(
            f".axon-decision .dec-push[data-j='{j}'] .dec-measured").inner_text()
        # colour the graph by push: each drawn node of the deciding token takes its push against the
        # candidate compared (the strip's data-push), the rest 0, on a scale symmetric around 0
        page.locator(".axon-decision .axon-tint").click()
        page.wait_for_function(f"{FEATURES}.marker.cmin < 0")
        push = page.evaluate("JSON.parse(document.querySelector('.axon-decision .dec-push:not(.off)').dataset.push)")
        keys, colours, cmin, cmax = page.evaluate(f"(() => {{ const t = {FEATURES}; "
                                                  "return [t.customdata, t.marker.color, t.marker.cmin, t.marker.cmax]; })()")
        assert push and any(str(k) in push for k in keys)
        assert colours == [pytest.approx(push.get(str(k), 0), abs=1e-9) for k in keys]
        assert cmin == -cmax and cmax == pytest.approx(max(abs(c) for c in colours))
        assert "push" in page.locator(".axon-decision .axon-tint").inner_text()
        page.locator(".axon-decision .axon-tint").click()  # back to brightness
        page.wait_for_function(f"{FEATURES}.marker.cmin === 0")
        SHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOT))
        assert w.clean(), (w.dialogs, w.errors)
        print(f"\nstrips drawn during the run: {len(during)} (first {during[0]}); at the end: {end}; {SHOT}")
