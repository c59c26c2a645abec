"""The replay page (axon_core.replay): parsed, inert, faithful to the run JSON and to the live view."""

from __future__ import annotations

import re
import subprocess
import sys
from html.parser import HTMLParser

import orjson
import pytest

from axon_core.features import key_name, node_key
from axon_core.replay import Q_ACT, Q_POS, replay_data, replay_html
from replay_runs import XSS, layered_run, live_run


class Page(HTMLParser):
    """Every element's tag and attributes, and each script's text."""

    def __init__(self):
        super().__init__()
        self.tags, self.scripts, self._in = [], [], None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._in = [dict(attrs), ""]

    def handle_data(self, data):
        if self._in is not None:
            self._in[1] += data

    def handle_endtag(self, tag):
        if tag == "script" and self._in is not None:
            self.scripts.append(tuple(self._in))
            self._in = None


def parse(page: str) -> Page:
    p = Page()
    p.feed(page)
    p.close()
    return p


@pytest.fixture(scope="module")
def live():
    return live_run(40)


def embedded(page: str) -> dict:
    data = [text for attrs, text in parse(page).scripts if attrs.get("id") == "axon-replay"]
    assert len(data) == 1
    return orjson.loads(data[0])


def features_by_token(data: dict) -> list[list[tuple[str, float]]]:
    """The features each frame says fired, as (key name, activation)."""
    names, out = [], []
    for f in data["frames"]:
        names += [n[0] for n in f.get("n", [])]
        out.append([(names[f["f"][i]], f["f"][i + 1] / Q_ACT) for i in range(0, len(f["f"]), 2)])
    return out


def run_features(d: dict) -> list[list[tuple[str, float]]]:
    return [[(key_name(node_key(f.get("layer"), f["index"])), round(f["activation"], 2)) for f in t["features"]]
            for t in d["tokens"]]


def test_page_parses_and_no_label_or_text_closes_a_script(live):
    _, d = live
    assert any(v == XSS for v in d["labels"].values())  # hostile labels reached the export
    for small in (False, True):
        page = replay_html(d, small=small)
        p = parse(page)
        scripts = p.scripts
        assert [a.get("id") for a, _ in scripts] == ["axon-replay", None, None]  # data, player, page
        assert not [t for t, _ in p.tags if t in ("img", "b")]  # the hostile markup made no element
        assert len(re.findall(r"<script\b", page, re.I)) == 3
        assert len(re.findall(r"</script", page, re.I)) == 3
        data_text = scripts[0][1]
        assert "<" not in data_text and ">" not in data_text and "&" not in data_text
        # the hostile label and token text arrive intact as data
        data = orjson.loads(data_text)
        labels = {n[1] for f in data["frames"] for n in f.get("n", [])}
        assert XSS in labels
        assert "</script><img src=x onerror=window.__xss=2>" in [f["t"] for f in data["frames"]]


def test_embeds_exactly_the_runs_tokens_and_features(live):
    _, d = live
    data = embedded(replay_html(d, small=True))
    assert [f["t"] for f in data["frames"]] == [t["display"] or t["text"] for t in d["tokens"]]
    assert [f["p"] for f in data["frames"]] == [t["position"] for t in d["tokens"]]
    assert [bool(f.get("pr")) for f in data["frames"]] == [t["is_prompt"] for t in d["tokens"]]
    assert features_by_token(data) == run_features(d)


def test_each_token_draws_what_the_live_view_shows_scrubbed_there(live):
    run, d = live
    data = replay_data(d)
    nodes = []
    for f in data["frames"]:
        nodes += f.get("n", [])
        placed = {n[0]: tuple(v / Q_POS for v in n[3:6]) for n in nodes if len(n) > 3}
        fired = [nodes[f["f"][i]][0] for i in range(0, len(f["f"]), 2)]
        run.scrub(f["p"])
        fig = run.figure(relayout=False)
        feats = fig["data"][3]
        live_pos = {key_name(i): (x, y, z) for i, x, y, z in zip(feats["customdata"], feats["x"], feats["y"], feats["z"])}
        # drawn at this token: the placed nodes seen so far, exactly the live view's, at its positions
        seen = {nodes[f2["f"][i]][0] for f2 in data["frames"][: data["frames"].index(f) + 1]
                for i in range(0, len(f2["f"]), 2)}
        assert {n for n in placed if n in seen} == set(live_pos)
        for name, xyz in live_pos.items():
            assert placed[name] == xyz
        assert sorted(n for n in fired if n in placed) == sorted(key_name(i) for i in fig["data"][4]["customdata"])
        names = [a["name"] for a in fig["layout"]["scene"]["annotations"]]
        assert [nodes[s[0]][0] for s in f["s"]] == [key_name(int(n)) for n in names]
        assert f.get("h", None) in (None, fig["layout"]["scene"]["xaxis"]["range"][1])
    run.scrub(None)


def test_layout_is_recorded_once_per_run_and_a_scrub_keeps_it(live):
    run, d = live
    pos = d["layout"]["positions"]
    assert len(pos) == len(run.layout.positions) <= 300
    run.scrub(5)
    fig = run.figure(relayout=False)
    feats = fig["data"][3]
    for i, x in zip(feats["customdata"], feats["x"]):
        assert pos[str(i)][0] == x
    run.scrub(None)


def test_old_runs_replay_too(live):
    _, d = live
    old = {k: v for k, v in d.items() if k != "layout"}
    old["schema"] = "axon-run/1"
    data = replay_data(old)  # laid out here, once, deterministically
    assert data == replay_data(old)
    assert features_by_token(data) == run_features(d)
    assert sum(len(n) > 3 for f in data["frames"] for n in f.get("n", [])) == min(300, len(d["labels"]))
    with pytest.raises(ValueError):
        replay_data({**d, "schema": "something-else"})


def test_layered_run_has_planes_and_layer_keys():
    d = layered_run()
    data = embedded(replay_html(d, small=True))
    assert data["planes"] == [[-1.5, "layer 5"], [1.5, "layer 8"]]
    assert features_by_token(data) == run_features(d)
    nodes = [n for f in data["frames"] for n in f.get("n", [])]
    assert {n[2] for n in nodes} == {5, 8}
    assert all(n[5] / Q_POS == (-1.5 if n[2] == 5 else 1.5) for n in nodes if len(n) > 3)  # on its layer's plane
    assert "layers=5%2C8" in data["meta"]["link"]


def test_meta_settings_and_link_back(live):
    _, d = live
    data = embedded(replay_html(d, small=True, app_url="https://alice-axon.hf.space/"))
    meta = data["meta"]
    assert meta["prompt"] == d["meta"]["prompt"] and meta["model"] == "gpt2-small"
    assert meta["settings"] == d["settings"]
    assert meta["link"].startswith("https://alice-axon.hf.space/?prompt=The+capital")
    assert "autorun=1" in meta["link"] and "seed=0" in meta["link"]


def test_both_flavours_are_one_small_self_contained_page(live):
    """The page draws with the player's own canvas renderer: no plotly.js, inlined or
    loaded, and nothing fetched from elsewhere, so "small" and "offline" are one page."""
    _, d = live
    page = replay_html(d)
    assert replay_html(d, small=True) == page
    p = parse(page)
    assert not [a for t, a in p.tags if "src" in a or "href" in a and t != "a"]  # no script, style or image loaded
    assert [t for t, _ in p.tags if t in ("link", "iframe", "object", "embed")] == []
    assert "plotly.js v" not in page and "cdn." not in page  # no bundle inlined, no CDN named
    assert 'renderer: "canvas"' in p.scripts[2][1]  # the page's script asks the player for its canvas renderer
    assert len(page) < 200_000


def test_cli_writes_the_same_bytes_as_the_function(live, tmp_path):
    _, d = live
    src = tmp_path / "run.json"
    src.write_bytes(orjson.dumps(d))
    for flag in ([], ["--small"]):  # --small is still accepted: the same page
        out = tmp_path / f"run{len(flag)}.html"
        done = subprocess.run([sys.executable, "-m", "axon_core.export", "replay", str(src), "-o", str(out), *flag],
                              capture_output=True, text=True, check=True)
        assert "wrote" in done.stdout
        assert out.read_bytes() == replay_html(d).encode()
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "nope"}')
    done = subprocess.run([sys.executable, "-m", "axon_core.export", "replay", str(bad), "-o", str(tmp_path / "x.html")],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "error: cannot replay" in done.stderr and "Traceback" not in done.stderr


def test_the_apps_download_is_the_clis_page_byte_for_byte(live, tmp_path, monkeypatch):
    """The app's "Download replay (HTML)" and the command line, run on the app's
    "Download run (JSON)" of the same run, write the very same bytes."""
    import tempfile

    from axon_core.page.downloads import write_download

    run, _ = live
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    url = "https://alice-axon.hf.space/"
    page = write_download(run, "replay", {"axon": "test"}, app_url=url)
    src = write_download(run, "json", {"axon": "test"})
    assert page.name == src.name[: -len(".json")] + ".replay.html"
    out = tmp_path / "cli.html"
    subprocess.run([sys.executable, "-m", "axon_core.export", "replay", str(src), "-o", str(out), "--small",
                    "--app-url", url], capture_output=True, text=True, check=True)
    assert out.read_bytes() == page.read_bytes()
    data = embedded(page.read_text(encoding="utf-8"))
    assert data["meta"]["link"].startswith(url) and len(data["frames"]) == len(run.steps)
    assert not [t for t, a in parse(page.read_text(encoding="utf-8")).tags if t == "script" and "src" in a]  # self-contained


def test_deltas_are_small(live):
    run, d = live
    data = replay_data(d)
    frames = data["frames"]
    # edges and nodes arrive once; later frames carry only what changed
    nodes = sum(len(f.get("n", [])) for f in frames)
    assert nodes == len(d["labels"])
    edges = sum(len(f.get("e", [])) // 3 for f in frames)
    full = sum(len(f.get("e", [])) // 3 for f in frames[:1])
    assert full <= edges
    assert len(orjson.dumps(data)) < 0.5 * len(orjson.dumps(d)) + 20_000
