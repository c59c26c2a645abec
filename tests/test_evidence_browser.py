"""Evidence in the inspector, in a real browser (one app launch): a table row opens the
inspector with AXON's logit lens at once and "on its way" for Neuronpedia's part
while the fake holds its answer; once let go, the page's evidence timer fills in
the top examples (max token marked) and Neuronpedia's lens, hostile tokens as
text. Then a search result that never fired goes into the steering box. Skips
(or fails under CI) like tests/test_browser.py."""

from __future__ import annotations

import urllib.parse

import pytest

from app_server import ROOT, AppServer
from neuronpedia_fake import FakeNeuronpedia
from test_browser import BROWSER_MISSING, BUSY, CHROMIUM, CHROMIUM_ARGS, NP_ID, READ_TABLE, TABLE, XSS

if BROWSER_MISSING:  # test_browser skipped (or, under CI, failed) the module already
    pytest.skip(f"browser tests skipped: {BROWSER_MISSING}", allow_module_level=True)

from playwright import sync_api  # noqa: E402

SHOT = ROOT / "out" / "browser" / "evidence.png"
EXAMPLE = [" The", " capital", " of", " France", XSS, " is", " Paris"]


@pytest.fixture(scope="module")
def app(offline_hub, tmp_path_factory):
    labels = {(NP_ID, i): f"concept {i}" for i in range(1024)}
    labels[(NP_ID, 1000)] = "zebra crossings"
    # the explanations in bulk too: the app downloads them at start-up, so search finds them locally
    with FakeNeuronpedia(labels=labels, batches={NP_ID: [[(i, d) for (_, i), d in labels.items()]]}) as fake:
        for i in range(1024):
            fake.feature_extra[(NP_ID, i)] = {
                "activations": [{"tokens": EXAMPLE, "values": [0, 0.5, 0, 2.0, 4.0, 0, 1.0], "maxValue": 4.0,
                                 "maxValueTokenIndex": 4}],
                "pos_str": [XSS, " Paris"], "pos_values": [1.5, 1.0], "neg_str": [" the"], "neg_values": [-1.0],
                "frac_nonzero": 0.002, "maxActApprox": 6.5}
        with AppServer(offline_hub, neuronpedia=fake, log_dir=tmp_path_factory.mktemp("app"),
                       env={"AXON_NEURONPEDIA_RATE": "500", "AXON_TORCH_THREADS": "1"}) as server:
            server.fake = fake
            yield server
            assert "Traceback" not in server.log_text(), server.log_text()[-3000:]


@pytest.mark.timeout(200)
def test_evidence_fills_in_when_it_arrives_and_a_found_feature_steers(app):
    fake = app.fake
    query = {"prompt": "The capital of France is", "max_tokens": 8, "seed": 2}
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        page.set_default_timeout(120_000)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(app.url + "?" + urllib.parse.urlencode(query))
        page.wait_for_function(f"document.querySelector('textarea')?.value === {query['prompt']!r}")
        page.wait_for_function(f"{BUSY} === 0")
        page.get_by_role("button", name="Generate", exact=True).click()
        page.wait_for_function("document.querySelector('#axon-status [data-state=done]') !== null")
        rows = page.evaluate(READ_TABLE, TABLE)
        feature = int(rows[0][0])
        path = fake.feature_path(NP_ID, feature)
        before = fake.count(path)
        fake.mode = "hold"  # Neuronpedia's answer waits until let_go()
        page.locator(f'{TABLE} [role=row][data-index="0"] [role=gridcell]').first.click()
        page.wait_for_function("n => document.body.innerText.includes('feature #' + n)", arg=str(feature))
        assert fake.wait_held(1)
        box = page.locator("#axon-evidence")
        page.wait_for_function("() => document.querySelector('#axon-evidence').innerText.includes('on its way')")
        assert "Logit lens · AXON" in box.inner_text()  # AXON's own, while Neuronpedia's is held
        assert fake.count(path) == before + 1 and box.locator(".axon-ex-max").count() == 0
        fake.let_go()
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
        assert page.evaluate("typeof window.__xss") == "undefined"
        assert not errors, errors
        browser.close()
