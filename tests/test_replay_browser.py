"""The replay page in a real browser, opened from a ``file://`` URL (no server running).

The session's Chromium (Playwright, tests/browser_kit.py); the
page is made from the tests' tiny fixtures (tests/replay_runs.py: a RunSession fed
40 random tokens, labels every third one hostile). The page draws with the player's
canvas-2D renderer (no plotly.js); what is checked is read from the player's
accessors (``drawn()``: the state, ``projected()``: where the last draw put each node,
``camera()``) and from the canvas's pixels:

1. played to the end (4×), every token of the run is in the text, in order;
2. scrubbed to token p (the slider, a click on a token), the scene rings exactly
   p's features of the run JSON (those the live view placed), draws every placed
   feature seen by p and none seen later, at the live view's positions for p
   (``RunSession.scrub(p)``; ``figure``) and the run JSON's recorded layout, to 1e-3;
3. inside a 700×600 iframe, the text, the graph and the controls lie wholly inside it;
4. hostile labels and token text stay text: no element made, no script run;
5. a drag on the canvas turns the camera (also while states arrive), a hover over a
   node's projected place shows its tooltip, every scene name's tag lies in the canvas.

WebGL runs in software (SwiftShader): every wait is generous, nothing is timed.
"""

from __future__ import annotations

import pytest

from axon_core.features import key_name
from axon_core.replay import replay_html
from browser_kit import LONG  # the session's Chromium: the ``browser`` fixture (tests/conftest.py)
from replay_runs import XSS, live_run

IDLE = "window.__axonReplay && window.__axonReplay.player.idle()"
# what the scene draws now: the player's state (drawn()), where its last draw put each node
# (projected(): CSS px in the canvas) and whether the canvas's pixel there is not the
# background (a node was painted there)
SCENE = """(() => { const pl = window.__axonReplay.player, d = pl.drawn(), pr = pl.projected();
  const cv = document.querySelector('#graph canvas'), g = cv.getContext('2d'), k = cv.width / pr.w;
  const bg = [11, 15, 25];
  const painted = pr.names.map((n, i) => {
    const x = Math.round(pr.x[i] * k), y = Math.round(pr.y[i] * k);
    if (!(x >= 0 && y >= 0 && x < cv.width && y < cv.height)) return null;  // off the canvas: not judged
    const px = g.getImageData(x, y, 1, 1).data;
    return Math.abs(px[0] - bg[0]) + Math.abs(px[1] - bg[1]) + Math.abs(px[2] - bg[2]) > 6;
  });
  return {names: d.names, x: d.x, y: d.y, z: d.z, hover: d.hover, ring: d.ring, labels: d.labels, at: pl.at,
          projected: pr.names, painted: painted, drawn: pl.stats.drawn}; })()"""

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
    assert shown["projected"] == shown["names"]  # the last draw drew exactly the state's nodes ...
    assert [p for p in shown["painted"] if p is not None] and all(p is not False for p in shown["painted"])  # ... in paint
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
    assert hostile and all("<img src=x onerror" in h for h in hostile)  # plain text, for textContent
    # the tooltip of a hostile node shows its label as text: no element made, no script run
    name = lonely(tab, [n for n, h in zip(shown["names"], shown["hover"]) if "onerror" in h])
    tip = hover_node(tab, name)
    assert "<img src=x onerror" in tip
    assert tab.evaluate("window.__xss") is None
    assert tab.evaluate("document.querySelectorAll('img, b').length") == 0
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


def canvas_box(tab):
    return tab.locator("#graph canvas").bounding_box()


def lonely(tab, names) -> str:
    """Of ``names``, the one drawn farthest from any other node (inside the canvas): a
    pointer on its place picks it and no other."""
    pr = tab.evaluate("window.__axonReplay.player.projected()")
    n = len(pr["names"])

    def gap(i):
        return min(((pr["x"][i] - pr["x"][j]) ** 2 + (pr["y"][i] - pr["y"][j]) ** 2) ** 0.5 for j in range(n) if j != i)

    inside = [i for i in range(n) if pr["names"][i] in names
              and 20 < pr["x"][i] < pr["w"] - 20 and 20 < pr["y"][i] < pr["h"] - 20]
    return pr["names"][max(inside, key=gap)]


def hover_node(tab, name: str) -> str:
    """Move the mouse onto ``name``'s projected place; the tooltip's text once it shows it."""
    pr = tab.evaluate("window.__axonReplay.player.projected()")
    i = pr["names"].index(name)
    box = canvas_box(tab)
    tab.mouse.move(box["x"] + pr["x"][i], box["y"] + pr["y"][i])
    tab.wait_for_function("(n) => { const t = document.querySelector('#graph .axon-tip');"
                          " return t && t.style.display !== 'none' && t.dataset.name === n; }", arg=name)
    return tab.eval_on_selector("#graph .axon-tip", "t => t.textContent")


def test_a_hover_over_a_node_shows_its_tooltip(tab, recorded):
    _, d = recorded
    scrub(tab, 39, "slider")
    pr = tab.evaluate("window.__axonReplay.player.projected()")
    name = lonely(tab, pr["names"])
    text = hover_node(tab, name)
    drawn = tab.evaluate("window.__axonReplay.player.drawn()")
    assert text == drawn["hover"][drawn["names"].index(name)]
    label = d["labels"].get(name.lstrip("#"), "Feature " + name.lstrip("#"))
    assert text.startswith(" ".join(label.split())[:20]) and name in text and "now " in text and "peak " in text
    # off every node, the tooltip goes
    box = canvas_box(tab)
    assert tab.evaluate("window.__axonReplay.player.pick(3, 3)") == -1
    tab.mouse.move(box["x"] + 3, box["y"] + 3)
    tab.wait_for_function("document.querySelector('#graph .axon-tip').style.display === 'none'")


def test_a_drag_on_the_canvas_turns_the_camera_even_while_states_arrive(tab):
    scrub(tab, 20, "slider")
    before = tab.evaluate("window.__axonReplay.player.camera()")
    assert before["eye"] == pytest.approx({"x": 0.95, "y": 0.95, "z": 0.7})  # the live view's opening eye
    box = canvas_box(tab)
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    tab.mouse.move(x, y)
    drawn_before = tab.evaluate("window.__axonReplay.player.stats.drawn")
    tab.mouse.down()
    for step in range(1, 9):
        tab.evaluate(f"window.__axonReplay.seek({20 + step})")  # a state arrives mid-gesture
        tab.mouse.move(x + 15 * step, y + 4 * step)
    drawn_mid = tab.evaluate("window.__axonReplay.player.stats.drawn")
    tab.mouse.up()
    tab.wait_for_function(IDLE)
    after = tab.evaluate("window.__axonReplay.player.camera()")
    moved = sum((after["eye"][a] - before["eye"][a]) ** 2 for a in "xyz") ** 0.5
    assert moved > 0.3, (before, after)  # the eye went round
    r0 = sum(before["eye"][a] ** 2 for a in "xyz") ** 0.5
    r1 = sum(after["eye"][a] ** 2 for a in "xyz") ** 0.5
    assert r1 == pytest.approx(r0, rel=1e-6)  # an orbit: same distance from the center
    assert after["up"] == {"x": 0, "y": 0, "z": 1} and tab.evaluate("window.__axonReplay.player.at") == 28
    assert drawn_mid > drawn_before  # drawn during the gesture (nothing held), and it went on
    # the names follow the new camera: each still at its node's new projected place
    names = tab.evaluate(NAMES)
    pr = tab.evaluate("window.__axonReplay.player.projected()")
    for n in names:
        i = pr["names"].index(n["name"])
        assert (n["x"], n["y"]) == pytest.approx((pr["x"][i], pr["y"][i]), abs=0.06)
    # a wheel zooms in (the eye comes closer), camera(cam) puts it back
    tab.mouse.move(x, y)
    tab.mouse.wheel(0, -300)
    tab.wait_for_function(IDLE)
    zoomed = tab.evaluate("window.__axonReplay.player.camera()")
    assert sum(zoomed["eye"][a] ** 2 for a in "xyz") ** 0.5 < r1 * 0.9
    tab.evaluate("window.__axonReplay.player.camera({eye: {x: 0.95, y: 0.95, z: 0.7}})")
    tab.wait_for_function(IDLE)
    assert tab.evaluate("window.__axonReplay.player.camera()")["eye"] == pytest.approx(before["eye"])


@pytest.mark.parametrize("viewport", [(1280, 800), (390, 844)])
def test_every_scene_names_tag_lies_within_the_canvas(browser, page_file, viewport):
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    try:
        page = context.new_page()
        page.set_default_timeout(LONG)
        page.goto(page_file.as_uri() + "?autoplay=0")
        page.wait_for_function(IDLE)
        for k in (5, 39):
            page.evaluate(f"window.__axonReplay.seek({k})")
            page.wait_for_function(f"window.__axonReplay.player.at === {k} && {IDLE}")
            want = page.evaluate("window.__axonReplay.player.notes().map(n => n.name)")
            box = page.locator("#graph canvas").bounding_box()
            tags = page.eval_on_selector_all(
                "#graph .axon-names div", "els => els.filter(d => d.style.display !== 'none').map(d => {"
                " const b = d.getBoundingClientRect(); return {name: d.dataset.name, text: d.textContent,"
                " x: b.x, y: b.y, w: b.width, h: b.height}; })")
            assert [t["name"] for t in tags] == want and tags
            for t in tags:
                assert t["text"] and t["w"] > 0
                assert box["x"] <= t["x"] and t["x"] + t["w"] <= box["x"] + box["width"] + 0.5, t
                assert box["y"] <= t["y"] and t["y"] + t["h"] <= box["y"] + box["height"] + 0.5, t
    finally:
        context.close()
