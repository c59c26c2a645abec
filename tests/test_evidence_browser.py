"""Evidence in the inspector, in a real browser (the session's bulk_app and
Chromium, tests/browser_kit.py): a table row opens the inspector with AXON's
logit lens at once and "on its way" for Neuronpedia's part while the fake holds
its answer; once let go, the page's evidence timer fills in
the top examples (max token marked) and Neuronpedia's lens, hostile tokens as
text. Then a search result that never fired goes into the steering box. Skips
(or fails under CI) like every browser test."""

from __future__ import annotations

import urllib.parse

import pytest

from app_server import ROOT
from browser_kit import NP_ID, XSS, ZEBRA, Watched, bulk_label_of, sync_api
from test_browser import READ_TABLE, TABLE

SHOT = ROOT / "out" / "browser" / "evidence.png"


@pytest.mark.timeout(200)
def test_evidence_fills_in_when_it_arrives_and_a_found_feature_steers(bulk_app, browser):
    fake = bulk_app.fake
    query = {"prompt": "The capital of France is", "max_tokens": 8, "seed": 2}
    assert bulk_label_of(ZEBRA) == "zebra crossings" and fake.feature_extra[(NP_ID, ZEBRA)]["maxActApprox"] == 6.5
    with Watched(browser, bulk_app.url + "?" + urllib.parse.urlencode(query), wait=None) as w:
        page = w.page
        w.settled(query["prompt"])
        page.get_by_role("button", name="Generate", exact=True).click()
        page.wait_for_function("document.querySelector('#axon-status [data-state=done]') !== null")
        rows = page.evaluate(READ_TABLE, TABLE)
        feature = int(rows[0][0])
        path = fake.feature_path(NP_ID, feature)
        before = fake.count(path)
        fake.mode = "hold"  # Neuronpedia's answer waits until let_go()
        try:
            page.locator(f'{TABLE} [role=row][data-index="0"] [role=gridcell]').first.click()
            page.wait_for_function("n => document.body.innerText.includes('feature #' + n)", arg=str(feature))
            assert fake.wait_held(1)
            box = page.locator("#axon-evidence")
            page.wait_for_function("() => document.querySelector('#axon-evidence').innerText.includes('on its way')")
            assert "Logit lens · AXON" in box.inner_text()  # AXON's own, while Neuronpedia's is held
            assert fake.count(path) == before + 1 and box.locator(".axon-ex-max").count() == 0
        finally:
            fake.let_go()  # (the fake is the session's: test_watch_browser uses it next)
        page.wait_for_function("() => document.querySelectorAll('#axon-evidence .axon-ex-max').length === 1")
        assert box.locator(".axon-ex-max").inner_text() == XSS  # the max token marked, as text
        assert box.locator("img").count() == 0 and "fires on 0.2 % of tokens" in box.inner_text()
        assert fake.count(path) == before + 1  # one evidence request, however often the timer looked
        page.locator("#axon-evidence").scroll_into_view_if_needed()
        SHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOT), full_page=True)

        # steer by search: a feature that never fired, found by its label, into the steering box
        find = page.get_by_label("Find a feature")
        find.fill("zebra")
        find.press("Enter")
        grid = '[role=grid][aria-label^="Features found"]'
        try:
            page.wait_for_function(f"() => document.querySelector('{grid}')?.innerText.includes('zebra crossings')",
                                   timeout=30_000)
        except sync_api.TimeoutError:
            page.screenshot(path=str(SHOT.with_name("evidence-find-failed.png")), full_page=True)
            raise AssertionError(page.evaluate("document.body.innerText")[-3000:])
        page.locator(f'{grid} [role=row][data-index="0"] [role=gridcell]').first.click()
        page.wait_for_function("() => document.body.innerText.includes('feature #1000')")
        page.wait_for_function("() => /strength 1 = .*maxActApprox 6.5/.test(document.body.innerText)")
        page.get_by_role("button", name="Add to steering").click()
        page.wait_for_function("() => [...document.querySelectorAll('textarea, input')]"
                               ".some(e => /1000:26/.test(e.value))")
        values = page.evaluate("[...document.querySelectorAll('textarea, input')].map(e => e.value)")
        assert "1000:26" in values, values  # 4 (the slider's default) × 6.5, the whole steering box
        assert w.clean(), (w.dialogs, w.errors)
