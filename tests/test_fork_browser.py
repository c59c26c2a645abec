"""Forks in a real browser (the session's app server and Chromium,
tests/browser_kit.py): the "fork" button beside a candidate in the decision
strip forks the run there and shows both continuations side by side; Copy link
carries the fork, and that link reopens it (the same texts). Skips (or fails
under CI) like every browser test."""

from __future__ import annotations

import urllib.parse

import pytest

from app_server import ROOT
from browser_kit import BUSY, SCRUB, Watched

SHOT = ROOT / "out" / "browser" / "fork.png"
QUERY = {"prompt": "The capital of France is", "max_tokens": 14, "seed": 4, "temperature": 1, "autorun": 1}
PANEL = """() => { const box = document.querySelector('.axon-compare-fork');
  if (!box) return null;
  return {head: box.querySelector('p').innerText,
          columns: [...box.querySelectorAll('.cols .axon-text')].map(col => [...col.querySelectorAll('.tok')]
            .map(t => ({text: t.textContent, diverge: t.classList.contains('diverge')})))}; }"""
# each column's first diverging token, against the column's visible box (it scrolls: 12 lines)
IN_VIEW = """() => [...document.querySelectorAll('.axon-compare-fork .cols .axon-text')].map(box => {
  const tok = box.querySelector('.tok.diverge'), b = box.getBoundingClientRect();
  const t = tok ? tok.getBoundingClientRect() : null;
  return {pos: tok ? tok.dataset.pos : null, top: t && t.top - b.top, bottom: t && b.bottom - t.bottom,
          scrolled: box.scrollTop, overflows: box.scrollHeight > box.clientHeight + 1}; })"""
DONE = "(() => { const p = document.querySelector('.axon-compare-fork p'); " \
       "return !!p && !p.innerText.includes('writing'); })()"


def _open(browser, url) -> Watched:
    w = Watched(browser, url, (1280, 800),
                wait="document.querySelectorAll('#axon-text-box .axon-text .tok.gen').length > 0")
    try:
        w.page.wait_for_function("document.querySelector('#axon-status [data-state=done]') !== null")
        w.page.wait_for_function(f"{BUSY} === 0")
    except BaseException:
        w.close()
        raise
    return w


def _assert_divergence_in_view(page, q: int) -> list[dict]:
    """The fork point is marked in both columns and lies inside each column's visible box."""
    page.wait_for_function("() => [...document.querySelectorAll('.axon-compare-fork .cols .axon-text')]"
                           ".every(b => b.dataset.atDiverge === '1')")
    cols = page.evaluate(IN_VIEW)
    assert len(cols) == 2 and all(c["pos"] == str(q) for c in cols), cols
    assert all(c["top"] >= 0 and c["bottom"] >= 0 for c in cols), cols
    return cols


@pytest.mark.timeout(240)
def test_a_fork_far_down_a_long_run_opens_at_the_divergence(browser_app, browser):
    """A long run (its text overflows each column's 12 lines) forked near its end: both
    columns open scrolled to the fork point, not at the top of the text."""
    query = {**QUERY, "max_tokens": 110, "seed": 5}
    with _open(browser, browser_app.url + "?" + urllib.parse.urlencode(query)) as w:
        page = w.page
        last = int(page.locator("#axon-text-box .axon-text .tok").last.get_attribute("data-pos"))
        q = last - 3
        page.locator(f"input[type=range][aria-label='range slider for {SCRUB}']").fill(str(q))
        page.wait_for_function(f"document.querySelector('.axon-decision').dataset.pos === '{q}'")
        page.locator(".axon-decision .axon-fork").nth(1).click()
        page.wait_for_function(DONE)
        cols = _assert_divergence_in_view(page, q)
        assert all(c["overflows"] and c["scrolled"] > 0 for c in cols), cols  # not vacuous: it had to scroll
        page.locator(".axon-compare-fork").scroll_into_view_if_needed()
        SHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOT.with_name("fork-long.png")))
        assert w.clean(), (w.dialogs, w.errors)


@pytest.mark.timeout(240)
def test_fork_button_forks_the_run_and_a_link_reopens_the_fork(browser_app, browser):
    with _open(browser, browser_app.url + "?" + urllib.parse.urlencode(QUERY)) as w:
        page = w.page
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
        _assert_divergence_in_view(page, q)
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
        assert w.clean(), (w.dialogs, w.errors)
    with _open(browser, browser_app.url + "?" + urllib.parse.urlsplit(link).query) as w:
        w.page.wait_for_function(DONE)
        again = w.page.evaluate(PANEL)
        assert again["columns"] == panel["columns"]
        assert w.clean(), (w.dialogs, w.errors)
    print(f"\nforked at {q} with token {tok} ({forced_text!r}); link {link}; {SHOT}")
