"""run_to_json / run_from_json round trip, and the standalone offline HTML page."""

from __future__ import annotations

import re
from datetime import date
from html.parser import HTMLParser

import orjson
import pytest

from axon_core.export import SCHEMA, download_name, plotly_js, run_from_json, run_to_json, slug, standalone_html
from axon_core.figure import figure_dict
from axon_core.generation import GenerationSettings
from axon_core.graph import GraphState
from axon_core.layout import ForceLayout
from steps_factory import random_steps, step

XSS = "<img src=x onerror=alert(1)>"
META = {"model": "gpt2", "release": "gpt2-small-res-jb", "sae_id": "blocks.8.hook_resid_pre",
        "neuronpedia_id": "gpt2-small/8-res-jb",
        "versions": {"torch": "2.13.0", "transformer_lens": "3.9.0", "sae_lens": "6.54.0",
                     "axon": "0.1.0"}}


def run():
    steps = [
        step(1, [(5, 2.5, 0.125), (9, 1.0, None)], next_token_id=262, is_prompt=True, text="The"),
        step(2, [(9, 3.0, -0.5)], next_token_id=3797, is_prompt=True, text=" cat"),
        step(3, [(5, 0.3, 0.1), (7, 1.1, 0.2), (9, 0.7, 0.0)], next_token_id=None,
             text=" sat</script>", prob=0.25, sampled_prob=0.3125,
             notice="stopped: max_new_tokens"),
    ]
    graph = GraphState()
    for s in steps:
        graph.add_step(s)
    return steps, graph


def test_round_trip():
    steps, graph = run()
    settings = GenerationSettings(max_new_tokens=7, temperature=0.0, seed=3)
    d = run_to_json(steps, settings, META, graph, {5: XSS})
    d2 = orjson.loads(orjson.dumps(d))  # really through JSON text
    steps2, settings2, meta2 = run_from_json(d2)
    assert steps2 == steps and settings2 == settings and meta2 == META
    assert d["schema"] == SCHEMA == "axon-run/2"
    assert d["settings"]["temperature"] == 0.0
    assert d["tokens"][0]["features"][0] == {"index": 5, "activation": 2.5, "attribution": 0.125}
    assert d["labels"] == {"5": XSS, "7": "", "9": ""}
    edges = {(e["source"], e["target"]): (e["count"], e["weight"]) for e in d["edges"]}
    assert edges == {(5, 9): (2, 1.0 + 0.3), (5, 7): (1, 0.3), (7, 9): (1, 0.7)}


def test_round_trip_random_run_and_bad_schema():
    steps = random_steps(30, seed=5)
    graph = GraphState()
    for s in steps:
        graph.add_step(s)
    d = orjson.loads(orjson.dumps(run_to_json(steps, GenerationSettings(), {}, graph, None)))
    assert run_from_json(d)[0] == steps
    d["settings"]["from_the_future"] = 1  # ignored
    assert run_from_json(d)[1] == GenerationSettings()
    with pytest.raises(ValueError):
        run_from_json({**d, "schema": "something-else/9"})


class Page(HTMLParser):
    """Collects script elements (attributes and text) while parsing the page."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[tuple[dict, str]] = []
        self._in: dict | None = None
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "script":
            self._in = dict(attrs)
            self.scripts.append((self._in, ""))

    def handle_data(self, data):
        if self._in is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)

    def handle_endtag(self, tag):
        if tag == "script":
            self._in = None


def test_standalone_html_offline_escaped_and_parseable():
    steps, graph = run()
    snap = graph.snapshot()
    pos = ForceLayout().update([n.index for n in snap.nodes],
                               [(e.source, e.target, e.weight) for e in snap.edges])
    fig = figure_dict(snap, pos, {5: XSS, 7: "</script><script>alert(2)</script>"})
    page = standalone_html(fig, f"AXON {XSS}", f"The cat{XSS} sat</script>")

    assert XSS not in page and "<img src=x onerror" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page  # the text and title, escaped
    assert page.count("</script>") == 3  # only our own three script elements close

    parser = Page()
    parser.feed(page)
    parser.close()
    assert "img" not in parser.tags and parser.tags.count("script") == 3
    assert all("src" not in attrs for attrs, _ in parser.scripts)  # nothing loaded from anywhere
    outside_js = page.replace(plotly_js(), "")
    assert not re.search(r"https?://", outside_js)  # no CDN or any URL of ours
    assert "cdn.plot.ly/plotly" not in page

    (data,) = [text for attrs, text in parser.scripts if attrs.get("id") == "axon-figure"]
    embedded = orjson.loads(data)
    assert embedded == orjson.loads(orjson.dumps(fig))
    assert sorted(embedded["data"][3]["customdata"]) == sorted(n.index for n in snap.nodes)
    for n in snap.nodes:
        assert n.index in embedded["data"][3]["customdata"]
    assert "Plotly.newPlot" in page and len(plotly_js()) > 1_000_000


def test_download_names_say_which_run_and_are_safe_file_names():
    day = date(2026, 12, 1)
    assert download_name(" The capital of France is", "gpt2-small", day, "json") == \
        "axon-the-capital-of-france-is-gpt2-small-20261201.json"
    # accents folded, punctuation and path separators gone, whole words up to 40 characters
    name = download_name('Café "../../etc" <b>: In 1969, the first person to walk on the Moon was',
                         "google/gemma-3-270m", day, "html")
    assert name == "axon-cafe-etc-b-in-1969-the-first-person-to-google-gemma-3-270m-20261201.html"
    assert re.fullmatch(r"[a-z0-9.-]+", name)
    assert download_name("東京は", "gpt2-small", day, "json") == "axon-gpt2-small-20261201.json"  # no ASCII word
    assert slug("x" * 90) == "x" * 40 and slug("") == ""
