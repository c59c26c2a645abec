"""Forks in a real browser (one app launch): the "fork" button beside a candidate in the
decision strip forks the run there and shows both continuations side by side;
Copy link carries the fork, and that link reopens it (the same texts). Skips
(or fails under CI) like tests/test_browser.py."""

from __future__ import annotations

import urllib.parse

import pytest

from app_server import ROOT, AppServer
from neuronpedia_fake import FakeNeuronpedia
from test_browser import BROWSER_MISSING, BUSY, LONG, NP_ID, SCRUB, XSS

if BROWSER_MISSING:  # test_browser skipped (or, under CI, failed) the module already
    pytest.skip(f"browser tests skipped: {BROWSER_MISSING}", allow_module_level=True)

from test_browser import browser  # noqa: E402,F401  (the fixture: one Chromium for the module)

SHOT = ROOT / "out" / "browser" / "fork.png"
QUERY = {"prompt": "The capital of France is", "max_tokens": 14, "seed": 4, "temperature": 1, "autorun": 1}
PANEL = """() => { const box = document.querySelector('.axon-compare-fork');
  if (!box) return null;
  return {head: box.querySelector('p').innerText,
          columns: [...box.querySelectorAll('.cols .axon-text')].map(col => [...col.querySelectorAll('.tok')]
            .map(t => ({text: t.textContent, diverge: t.classList.contains('diverge')})))}; }"""
DONE = "(() => { const p = document.querySelector('.axon-compare-fork p'); " \
       "return !!p && !p.innerText.includes('writing'); })()"


@pytest.fixture(scope="module")
def app(offline_hub, tmp_path_factory):
    labels = {(NP_ID, i): XSS if i % 5 == 0 else f"concept {i}" for i in range(1024)}
    with FakeNeuronpedia(labels=labels) as fake:
        with AppServer(offline_hub, neuronpedia=fake, log_dir=tmp_path_factory.mktemp("app"),
                       env={"AXON_NEURONPEDIA_RATE": "500", "AXON_TORCH_THREADS": "1"}) as server:
            yield server
            assert "Traceback" not in server.log_text(), server.log_text()[-3000:]


def _open(browser, url):  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(LONG)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_function("document.querySelectorAll('#axon-text-box .axon-text .tok.gen').length > 0")
    page.wait_for_function("document.querySelector('#axon-status [data-state=done]') !== null")
    page.wait_for_function(f"{BUSY} === 0")
    return context, page, errors


@pytest.mark.timeout(240)
def test_fork_button_forks_the_run_and_a_link_reopens_the_fork(app, browser):  # noqa: F811
    context, page, errors = _open(browser, app.url + "?" + urllib.parse.urlencode(QUERY))
    main = page.eval_on_selector_all("#axon-text-box .axon-text .tok", "els => els.map(e => e.textContent)")
    last = int(page.locator("#axon-text-box .axon-text .tok").last.get_attribute("data-pos"))
    q = last - 6
    page.locator(f"input[type=range][aria-label='range slider for {SCRUB}']").fill(str(q))
    page.wait_for_function(f"document.querySelector('.axon-decision').dataset.pos === '{q}'")
    fork = page.locator(".axon-decision .axon-fork").nth(1)
    tok = fork.get_attribute("data-tok")
    assert fork.get_attribute("data-pos") == str(q)
    cand = fork.locator("xpath=preceding-sibling::button[1]")
    assert "chosen" not in (cand.get_attribute("class") or "")
    forced_text = cand.inner_text().split("”")[0].lstrip("“")
    fork.click()
    page.wait_for_function(DONE)
    panel = page.evaluate(PANEL)
    assert f"Fork at position {q}" in panel["head"].replace("\n", " ")
    as_run, forked = panel["columns"]
    assert [t["text"] for t in as_run] == main and len(forked) == len(main)
    # tokens start at position 1 (BOS is not shown): the fork is column index q - 1, marked in both columns
    assert [t["text"] for t in forked[: q - 1]] == main[: q - 1]
    assert forked[q - 1]["text"] == forced_text.replace("↵", "\n")
    assert as_run[q - 1]["diverge"] and forked[q - 1]["diverge"]
    # a plain click on a candidate still only compares (no new fork asked)
    page.locator(".axon-decision .axon-cand:not(.chosen)").nth(0).click()
    assert page.evaluate(PANEL)["columns"][1] == forked
    SHOT.parent.mkdir(parents=True, exist_ok=True)
    page.locator(".axon-decision").scroll_into_view_if_needed()
    page.screenshot(path=str(SHOT))
    page.locator(".axon-compare-fork").scroll_into_view_if_needed()
    page.screenshot(path=str(SHOT.with_name("fork-panel.png")))
    # Copy link carries the fork; the link reopens it: the same two texts
    page.get_by_role("button", name="Copy link", exact=True).click()
    page.wait_for_function("[...document.querySelectorAll('textarea, input')].some(e => e.value.includes('fork='))")
    link = page.evaluate("[...document.querySelectorAll('textarea, input')].map(e => e.value)"
                         ".find(v => v.includes('fork='))")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)
    assert query["fork"] == [f"{q}:{tok}"] and query["autorun"] == ["1"]
    assert page.evaluate("window.__xss") is None and not errors, errors
    context.close()
    context, page, errors = _open(browser, app.url + "?" + urllib.parse.urlsplit(link).query)
    page.wait_for_function(DONE)
    again = page.evaluate(PANEL)
    assert again["columns"] == panel["columns"]
    assert page.evaluate("window.__xss") is None and not errors, errors
    context.close()
    print(f"\nforked at {q} with token {tok} ({forced_text!r}); link {link}; {SHOT}")
