"""The replay page in a real browser, opened from a ``file://`` URL (no server running).

The session's Chromium (Playwright, tests/browser_kit.py); the
page is made from the tests' tiny fixtures (tests/replay_runs.py: a RunSession fed
40 random tokens, labels every third one hostile), offline flavour (plotly.js
inlined), and what is checked is read from the Plotly scene itself (``gd.data``):

1. played to the end (4×), every token of the run is in the text, in order;
2. scrubbed to token p (the slider, a click on a token), the scene rings exactly
   p's features of the run JSON (those the live view placed), draws every placed
   feature seen by p and none seen later, at the live view's positions for p
   (``RunSession.scrub(p)``; ``figure``) and the run JSON's recorded layout, to 1e-3;
3. inside a 700×600 iframe, the text, the graph and the controls lie wholly inside it;
4. hostile labels and token text stay text: no element made, no script run.

WebGL runs in software (SwiftShader): every wait is generous, nothing is timed.
"""

from __future__ import annotations

import pytest

from axon_core.features import key_name
from axon_core.replay import replay_html
from browser_kit import LONG  # the session's Chromium: the ``browser`` fixture (tests/conftest.py)
from replay_runs import XSS, live_run

IDLE = "window.__axonReplay && window.__axonReplay.player.idle()"
# what the scene draws now: the features trace (3) and the ring trace (4), from Plotly's own data
SCENE = """(() => { const gd = document.getElementById('graph'), f = gd.data[3], r = gd.data[4];
  const keep = Array.from(f.customdata).map((n, i) => i).filter(i => f.customdata[i] !== null);  // not the blank point
  const pick = (a) => keep.map(i => a[i]);
  return {names: pick(f.customdata), x: pick(f.x), y: pick(f.y), z: pick(f.z), hover: pick(f.hovertext),
          ring: Array.from(r.customdata).filter(n => n !== null), labels: window.__axonReplay.player.drawn().labels,
          at: window.__axonReplay.player.at}; })()"""

# the names written over the scene: which node, and where its point is (px, in the graph)
NAMES = """Array.from(document.querySelectorAll('#graph .axon-names div[data-kind=name]'))
  .filter(d => d.style.display !== 'none')
  .map(d => ({name: d.dataset.name, text: d.textContent, x: Number(d.dataset.x), y: Number(d.dataset.y)}))"""


@pytest.fixture(scope="module")
def recorded():
    return live_run(40)


@pytest.fixture(scope="module")
def page_file(recorded, tmp_path_factory):
    _, d = recorded
    folder = tmp_path_factory.mktemp("replay")
    (folder / "run.html").write_text(replay_html(d), encoding="utf-8")
    (folder / "post.html").write_text(
        '<!DOCTYPE html><html><body style="margin:0">'
        '<iframe id="f" src="run.html?autoplay=0" width="700" height="600" style="border:0"></iframe></body></html>',
        encoding="utf-8")
    return folder / "run.html"


@pytest.fixture(scope="module")
def tab(browser, page_file):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(LONG)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: (errors.append("dialog " + d.message), d.dismiss()))
    page.goto(page_file.as_uri())  # it plays at once
    page.wait_for_function("window.__axonReplay")
    page.select_option("#speed", "4")
    yield page
    context.close()
    assert not errors, errors


def run_tokens(d):
    return [t["display"] or t["text"] for t in d["tokens"]]


def test_played_to_the_end_it_shows_every_token(tab, recorded):
    _, d = recorded
    tab.wait_for_function("document.body.dataset.state === 'done'")
    tab.wait_for_function(IDLE)
    spans = tab.eval_on_selector_all("#text .tok:not(.ahead)", "els => els.map(e => e.textContent)")
    assert [s.replace("\u21b5\n", "\n") for s in spans] == run_tokens(d)
    assert tab.inner_text("#where") == f"{len(d['tokens'])} / {len(d['tokens'])}"
    assert tab.inner_text("#play") == "Play"


def scrub(tab, k: int, by: str):
    if by == "slider":
        tab.eval_on_selector("#slider", "(s, k) => { s.value = String(k); s.dispatchEvent(new Event('input')); }", k)
    else:
        tab.click(f"#text .tok[data-k='{k}']")
    tab.wait_for_function(f"window.__axonReplay.player.at === {k} && {IDLE}")
    return tab.evaluate(SCENE)


@pytest.mark.parametrize("k, by", [(2, "slider"), (17, "click"), (9, "slider"), (39, "click"), (0, "click")])
def test_scrubbed_to_a_token_it_draws_what_the_live_view_drew(tab, recorded, k, by):
    run, d = recorded
    token = d["tokens"][k]
    placed = {key_name(int(i)): xyz for i, xyz in d["layout"]["positions"].items()}  # one SAE: keys are indices
    shown = scrub(tab, k, by)
    assert shown["at"] == k
    fired = {key_name(f["index"]) for f in token["features"]}
    assert set(shown["ring"]) == {n for n in fired if n in placed}  # exactly p's features are lit
    seen = {key_name(f["index"]) for t in d["tokens"][: k + 1] for f in t["features"]}
    later = {key_name(f["index"]) for t in d["tokens"][k + 1:] for f in t["features"]} - seen
    assert set(shown["names"]) == {n for n in seen if n in placed}
    assert not set(shown["names"]) & later  # nothing not yet seen
    # the live view scrubbed to the same token: same nodes at the same places
    run.scrub(token["position"])
    try:
        fig = run.figure(relayout=False)
    finally:
        run.scrub(None)
    live = fig["data"][3]
    want = {key_name(i): xyz for i, *xyz in zip(live["customdata"], live["x"], live["y"], live["z"])}
    got = {n: xyz for n, *xyz in zip(shown["names"], shown["x"], shown["y"], shown["z"])}
    assert set(got) == set(want)
    for name, xyz in got.items():
        assert xyz == pytest.approx(want[name], abs=1e-3)
        assert xyz == pytest.approx(placed[name], abs=1e-3)
    assert tab.eval_on_selector_all("#text .tok.here", "els => els.map(e => e.dataset.k)") == [str(k)]
    # the text up to p is the text; what follows is dimmed (seen once), the live view's scrub too
    ahead = tab.eval_on_selector_all("#text .tok", "els => els.map(e => e.classList.contains('ahead'))")
    assert ahead == [i > k for i in range(len(d["tokens"]))]
    # the newest token's names (the live view's), written over the scene at their nodes
    names = tab.evaluate(NAMES)
    live_names = [key_name(int(a["name"])) for a in fig["layout"]["scene"]["annotations"]]
    assert [n["name"] for n in names] == live_names
    graph = tab.locator("#graph").bounding_box()
    for n in names:
        assert 0 <= n["x"] <= graph["width"] and 0 <= n["y"] <= graph["height"], n


def test_hostile_labels_and_text_stay_text(tab, recorded):
    _, d = recorded
    shown = scrub(tab, 39, "slider")
    assert tab.evaluate("window.__xss") is None
    assert tab.evaluate("document.querySelectorAll('img, b').length") == 0
    hostile = [h for h in shown["hover"] if "onerror" in h]
    assert hostile and all("<img" not in h and "&lt;img" in h for h in hostile)  # escaped for Plotly
    assert XSS in d["labels"].values()
    assert "</script><img src=x onerror=window.__xss=2>" in tab.eval_on_selector_all(
        "#text .tok", "els => els.map(e => e.textContent)")
    assert tab.title().startswith("AXON replay · The capital <b>of</b> France")


def test_in_a_700_by_600_iframe_text_graph_and_controls_fit(browser, page_file):
    context = browser.new_context(viewport={"width": 900, "height": 700})
    try:
        page = context.new_page()
        page.set_default_timeout(LONG)
        page.goto((page_file.parent / "post.html").as_uri())
        frame = page.frame_locator("#f")
        inner = page.frames[1]
        inner.wait_for_function(IDLE)
        box = page.locator("#f").bounding_box()
        for sel in ("#text", "#graph", "#graph canvas", "#controls", "#play", "#speed", "#slider", "#where", "#title"):
            b = frame.locator(sel).first.bounding_box()
            assert b is not None and b["width"] > 0 and b["height"] > 0, sel
            assert box["x"] <= b["x"] and b["x"] + b["width"] <= box["x"] + box["width"] + 0.5, sel
            assert box["y"] <= b["y"] and b["y"] + b["height"] <= box["y"] + box["height"] + 0.5, sel
        assert frame.locator("#graph").bounding_box()["height"] > 250  # the graph gets most of it
        assert inner.evaluate("document.querySelectorAll('#text .tok').length") == 40
        assert inner.evaluate("document.documentElement.scrollHeight <= innerHeight")
    finally:
        context.close()


def test_a_forked_run_shows_both_continuations_and_its_text_stays_text(browser, tmp_path):  # noqa: F811
    """A run JSON carrying a fork (tests/test_fork_export.py's): the page shows the fork
    point, both texts side by side and the link that reopens it; a click on the fork's
    head scrubs there; its hostile text is text."""
    from test_fork_export import _forked_live

    run, own, d = _forked_live()
    path = tmp_path / "forked.html"
    path.write_text(replay_html(d, app_url="http://127.0.0.1:7860/"), encoding="utf-8")
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        page.set_default_timeout(LONG)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(path.as_uri() + "?autoplay=0")
        page.wait_for_function(IDLE)
        assert page.is_visible("#fork")
        cols = page.eval_on_selector_all("#fork .fork-text", "els => els.map(e => e.textContent)")
        assert cols == ["".join(s.shown for s in run.steps if s.position >= run.fork[0]),
                        "".join(s.shown for s in own)]
        head = page.inner_text("#fork .fork-head")
        assert f"at token {run.fork[0]}" in head and "<img src=x onerror=window.__xss=3>" in head
        href = page.get_attribute("#fork .fork-head a", "href")
        assert href.startswith("http://127.0.0.1:7860/") and f"fork={run.fork[0]}%3A{own[0].token_id}" in href
        assert page.evaluate("document.querySelectorAll('img, b').length") == 0
        k = next(i for i, s in enumerate(run.steps) if s.position == run.fork[0])
        assert page.get_attribute("#text .tok.forked", "data-k") == str(k)
        page.click("#fork .fork-head strong")
        page.wait_for_function(f"window.__axonReplay.player.at === {k}")
        assert page.evaluate("window.__xss") is None and not errors, errors
    finally:
        context.close()
