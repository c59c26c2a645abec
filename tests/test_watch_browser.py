"""The watch list in a real browser (the session's bulk_app and Chromium, tests/browser_kit.py):
find a feature by a word of its label, click the result, see it pinned; Generate: its
sparkline grows under the text while the run streams and its mark follows the token slider;
Copy link carries ``watch=``, and the link reopens the watch list in a fresh page; a table row and a graph node pinned by the Watch
button join it, and the next run draws one sparkline for each. Skips (or fails under CI)
like every browser test."""

from __future__ import annotations

import urllib.parse

import pytest

from app_server import ROOT
from browser_kit import BUSY, LONG, SCRUB, WATCHED, Watched, bulk_label_of
from test_browser import PROJECT_NODES, READ_TABLE, TABLE

SHOT = ROOT / "out" / "browser" / "watch.png"
FEATURE = WATCHED  # bulk_label_of(7): "France and its capital city"
FOUND = '[role=grid][aria-label^="Features found"]'
# every redraw of the text box: the watched sparkline's token count and marked index
RECORD = """() => { window.__sparks = []; const box = document.querySelector('.axon-side');
  new MutationObserver(() => { const s = box.querySelector('.axon-spark');
    if (s) window.__sparks.push([+s.dataset.tokens, +s.dataset.at]); })
    .observe(box, {childList: true, subtree: true}); }"""
SPARK = f"document.querySelector('.axon-spark[data-key=\"{FEATURE}\"]')"


@pytest.mark.timeout(240)
def test_find_pin_watch_scrub_and_link(bulk_app, browser):
    query = {"prompt": "The capital of France is", "max_tokens": 60, "seed": 4, "temperature": 1}
    assert bulk_label_of(FEATURE) == "France and its capital city"
    with Watched(browser, bulk_app.url + "?" + urllib.parse.urlencode(query), (1280, 900), wait=None) as w:
        page, context = w.page, w.context
        w.settled(query["prompt"])
        # find by a word's start (the bulk download of the labels may still be on its way: ask again)
        box = page.get_by_label("Find a feature")
        for _ in range(60):
            box.fill("Fran")
            box.press("Enter")
            try:
                page.wait_for_function(f"[...document.querySelectorAll('{FOUND} [role=gridcell]')]"
                                       ".some(td => td.innerText.includes('France and its capital'))", timeout=2000)
                break
            except Exception:  # noqa: BLE001 - not local yet
                continue
        cell = page.locator(f"{FOUND} [role=gridcell]", has_text="France and its capital").first
        cell.click()
        watch = page.locator("#axon-watch-box textarea")
        page.wait_for_function(f"document.querySelector('#axon-watch-box textarea').value === '{FEATURE}'")
        # generate: the sparkline grows while the run streams
        page.evaluate(RECORD)
        page.get_by_role("button", name="Generate", exact=True).click()
        page.wait_for_function("document.querySelector('#axon-status [data-state=done]') !== null")
        page.wait_for_function(f"{BUSY} === 0")
        n_tokens = page.locator(".axon-text .tok").count()
        page.wait_for_function(f"{SPARK} && +{SPARK}.dataset.tokens === {n_tokens}")
        grew = sorted({t for t, _ in page.evaluate("window.__sparks")})
        assert len(grew) >= 3 and grew[0] < n_tokens, grew  # drawn at several lengths during the run
        assert int(page.locator(".axon-spark").first.get_attribute("data-at")) == n_tokens - 1
        assert "France and its capital" in page.locator(".axon-spark-name").first.inner_text()
        assert "watched:" in page.locator(".axon-text .tok").nth(2).get_attribute("title")
        # the slider: the sparkline marks the scrubbed token
        positions = page.eval_on_selector_all(".axon-text .tok", "els => els.map(e => +e.dataset.pos)")
        i = len(positions) // 2
        page.locator(f"input[type=range][aria-label='range slider for {SCRUB}']").fill(str(positions[i]))
        page.wait_for_function(f"+{SPARK}.dataset.at === {i}")
        assert page.locator(".axon-text .tok.here").get_attribute("data-pos") == str(positions[i])
        SHOT.parent.mkdir(parents=True, exist_ok=True)
        page.locator(".axon-side").screenshot(path=str(SHOT))  # the text, its sparkline, the strip
        # the link carries the watch list, and reopens it
        page.get_by_role("button", name="Copy link").click()
        links = "[...document.querySelectorAll('textarea')].map(t => t.value).filter(v => v.includes('watch='))"
        page.wait_for_function(f"{links}.length > 0")
        link = page.evaluate(f"{links}[0]")
        assert f"watch={FEATURE}" in link, link
        fresh = context.new_page()
        fresh.set_default_timeout(LONG)
        fresh.goto(link)
        fresh.wait_for_function(f"document.querySelector('#axon-watch-box textarea')?.value === '{FEATURE}'")
        fresh.wait_for_function(f"{SPARK} !== null")
        fresh.wait_for_function(f"{BUSY} === 0")
        assert fresh.locator(".axon-spark").count() == 1
        assert watch.input_value() == str(FEATURE)
        # pinned from the table and from the graph: the Watch button pins the feature last clicked there
        page.bring_to_front()
        watch_btn = page.get_by_role("button", name="Watch the clicked feature")
        rows = page.evaluate(READ_TABLE, TABLE)
        j = next(j for j, r in enumerate(rows[:5]) if int(r[0]) != FEATURE)
        page.locator(f'{TABLE} [role=row][data-index="{j}"] [role=gridcell]').first.click()
        watch_btn.click()
        want = [FEATURE, int(rows[j][0])]
        page.wait_for_function(f"document.querySelector('#axon-watch-box textarea').value === '{', '.join(map(str, want))}'")
        page.evaluate("document.querySelector('.axon-graph').scrollIntoView({block: 'center'})")
        page.evaluate("""() => { window.__axonHover = null; document.querySelector('.axon-graph')
            .on('plotly_hover', (e) => { window.__axonHover = e.points[0].customdata; }); }""")
        nodes = [n for n in page.evaluate(PROJECT_NODES) if n["visible"] and n["id"] not in want]
        for n in sorted(nodes, key=lambda n: -n["size"])[:12]:
            page.mouse.move(n["x"], n["y"])
            try:
                page.wait_for_function("id => window.__axonHover === id", arg=n["id"], timeout=3000)
            except Exception:  # noqa: BLE001 - hidden behind another node: the next
                continue
            page.mouse.down()  # Plotly picks a gl3d click while the button is down: hold it a moment
            page.wait_for_timeout(300)
            page.mouse.up()
            page.wait_for_function("n => document.body.innerText.includes('feature #' + n)", arg=n["id"])
            watch_btn.click()
            want.append(n["id"])
            break
        assert len(want) == 3, f"no node of {len(nodes)} could be clicked"
        page.wait_for_function(f"document.querySelector('#axon-watch-box textarea').value === '{', '.join(map(str, want))}'")
        # the next run follows all three, one sparkline each, as long as the run
        page.get_by_role("button", name="Generate", exact=True).click()
        page.wait_for_function("document.querySelector('#axon-status [data-state=done]') !== null")
        page.wait_for_function(f"{BUSY} === 0")
        n_tokens = page.locator(".axon-text .tok").count()
        page.wait_for_function(f"[...document.querySelectorAll('.axon-spark')].map(s => s.dataset.key).join() === "
                               f"'{','.join(map(str, want))}'")
        assert {s for s in page.eval_on_selector_all(".axon-spark", "els => els.map(e => +e.dataset.tokens)")} \
            == {n_tokens}
        watched = page.locator(".axon-text .tok").nth(2).get_attribute("title").split("watched: ")[1]
        assert watched.count("(") == 3 and "France and its capital" in watched, watched
        assert w.clean(), (w.dialogs, w.errors)
        print(f"\nsparkline drawn at {len(grew)} lengths during the run ({grew[:3]} … {grew[-1]}); {SHOT}")
