"""A run → portable JSON (and back), and a figure → one self-contained, offline HTML file.

Worked example::

    d = run_to_json(steps, settings, {"model": "gpt2", "release": "gpt2-small-res-jb",
                    "sae_id": "blocks.8.hook_resid_pre", "neuronpedia_id": "gpt2-small/8-res-jb",
                    "versions": {"torch": "2.13.0", "axon": "0.1"}}, graph, labels)
    d["schema"]                      # 'axon-run/2'
    d["tokens"][0]["features"][0]    # {'index': 7124, 'activation': 6.2, 'attribution': 0.31}
    steps2, settings2, meta2 = run_from_json(orjson.loads(orjson.dumps(d)))
    assert steps2 == steps and settings2 == settings

A run that read several SAEs (``Generation(..., extra=...)``): pass
``saes=generation.saes`` (written to ``meta["saes"]``: release, sae_id,
hook_name, layer, neuronpedia_id of each, the primary first); each feature then
carries its ``"layer"``, and ``labels`` are keyed ``"<layer>:<index>"`` for
layered features (``layer_labels`` gives each layer's label source; the
primary's layer falls back to ``label_of``), and each edge its
``"source_layer"`` and ``"target_layer"``. Schema ``axon-run/2`` adds just
that to ``axon-run/1``, which :func:`run_from_json` still reads. A run shown
with a fork beside it (a strip's "fork", a ``fork=`` link, ``/generate``'s
``fork``) also carries ``"fork"`` (:func:`fork_json`): the fork point, the
forced token, both texts from there and the fork's own tokens with their
features; an optional key, so still ``axon-run/2`` (a reader that does not know
it ignores it; :func:`fork_from_json` reads it).
    page = standalone_html(figure_dict(snap, pos, labels), "AXON run", generated_text)
    download_name("The capital of France is", "gpt2-small", date(2026, 12, 1), "json")
    # 'axon-the-capital-of-france-is-gpt2-small-20261201.json'

``meta`` is passed through as given (model, release, sae_id, neuronpedia_id and a
``versions`` dict of torch / transformer_lens / sae_lens / axon are expected);
nothing heavy is imported here. In the HTML, plotly.js is inlined from the
installed ``plotly`` package (no CDN), the figure is embedded as JSON with
``<``, ``>`` and ``&`` written as ``\\u003c``…, so no string in it can close the
script element, and the title and text are HTML-escaped.
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import asdict, fields
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import orjson

from .decision import Candidate, Decision, Fit
from .features import FeatureHit, split_key
from .fork import Fork, fork_seed
from .generation import GenerationSettings, TokenStep
from .graph import GraphState, LabelSource, label_fn

if TYPE_CHECKING:
    from datetime import date

SCHEMA = "axon-run/2"
READABLE = ("axon-run/1", SCHEMA)  # /1: one SAE, features without "layer", no meta["saes"]


def run_to_json(steps: list[TokenStep], settings: GenerationSettings, meta: dict,
                graph: GraphState, label_of: LabelSource, saes: Sequence[Any] | None = None,
                layer_labels: Mapping[int, LabelSource] | None = None,
                fork: tuple[tuple[int, int], Sequence[TokenStep]] | None = None) -> dict[str, Any]:
    """Everything needed to show or reproduce a run, as JSON-ready plain values.
    ``saes``: the SAEs the run read (:attr:`Generation.saes`), for ``meta["saes"]``.
    ``fork``: ``((position, token_id), the fork's steps)``, a fork shown beside the
    run, written as ``"fork"`` (:func:`fork_json`; its features' labels join ``labels``)."""
    label = label_fn(label_of)
    meta = dict(meta)
    if saes is not None:
        meta["saes"] = [s.describe() if hasattr(s, "describe") else dict(s) for s in saes]
    primary_layer = meta["saes"][0].get("layer") if meta.get("saes") else None
    tokens = [token_json(s) for s in steps]
    edges = []
    for e in graph.edges():  # graph nodes are (layer, index) keys in a run of several SAEs
        (la, a), (lb, b) = split_key(e.source), split_key(e.target)
        edge = {"source": a, "target": b, "count": e.count, "weight": e.weight}
        if la is not None:
            edge.update(source_layer=la, target_layer=lb)
        edges.append(edge)
    forked = [s for s in fork[1] if s.position >= fork[0][0]] if fork is not None else []
    seen = sorted({(f.layer if f.layer is not None else -1, f.index) for s in [*steps, *forked] for f in s.features})
    labels = {}
    for layer, i in seen:
        if layer < 0:
            labels[str(i)] = label(i)
        elif layer_labels is not None and layer in layer_labels:
            labels[f"{layer}:{i}"] = label_fn(layer_labels[layer])(i)
        else:
            labels[f"{layer}:{i}"] = label(i) if layer == primary_layer else ""
    d = {
        "schema": SCHEMA, "meta": meta, "settings": asdict(settings),
        "tokens": tokens, "edges": edges, "labels": labels,
    }
    if fork is not None:
        d["fork"] = fork_json(*fork[0], steps, fork[1], settings.seed)
    return d


def token_json(s: TokenStep) -> dict[str, Any]:
    """One step of a run (or of a fork) as plain values (see :func:`run_to_json`)."""
    return {
        "position": s.position, "token_id": s.token_id, "text": s.text,
        "is_prompt": s.is_prompt, "next_token_id": s.next_token_id, "prob": s.prob,
        "sampled_prob": s.sampled_prob, "notice": s.notice, "display": s.display,
        "features": [_feature(f) for f in s.features],
        **({"decision": decision_json(s.decision)} if s.decision is not None else {}),
        **({"fit": [fit_json(f) for f in s.fit]} if s.fit else {}),
        # the watched features' exact activations, in the order of meta["watch"] (a run that watched some)
        **({"watched": [float(v) for v in s.watched]} if s.watched else {}),
    }


def fork_json(position: int, token_id: int, steps: Sequence[TokenStep], fork_steps: Sequence[TokenStep],
              seed: int) -> dict[str, Any]:
    """A fork of the run ``steps``: ``token_id`` forced at ``position`` (see
    :mod:`axon_core.fork`). ``tokens``: the fork's own steps from the forced token
    on, as the run's ``tokens`` (the steps before it are the run's own);
    ``replaced``: what the run chose there; ``original`` and ``continuation``:
    the run's text and the fork's from ``position`` on, as shown; ``seed``: the
    seed of the fork's sampling after the forced token; ``link_fork``: the share
    link's ``fork=`` value."""
    own = [s for s in fork_steps if s.position >= position]
    was = next((s for s in steps if s.position == position), None)
    return {
        "position": int(position), "token_id": int(token_id), "text": own[0].shown if own else "",
        "replaced": None if was is None else {"token_id": was.token_id, "text": was.shown},
        "original": "".join(s.shown for s in steps if s.position >= position),
        "continuation": "".join(s.shown for s in own),
        "seed": fork_seed(seed, Fork(int(position), int(token_id))), "link_fork": f"{int(position)}:{int(token_id)}",
        "tokens": [token_json(s) for s in own],
    }


def fork_from_json(d: dict[str, Any]) -> tuple[Fork, list[TokenStep]] | None:
    """The fork a run JSON carries (:func:`fork_json`) and its steps from the
    forced token on, or None (a run shown without a fork, or an older file)."""
    f = d.get("fork")
    if not isinstance(f, dict):
        return None
    return Fork(int(f["position"]), int(f["token_id"])), [step_from_json(t) for t in f.get("tokens") or ()]


def _feature(f: FeatureHit) -> dict[str, Any]:
    d = {"index": int(f.index), "activation": float(f.activation), "attribution": _opt_float(f.attribution)}
    if f.layer is not None:  # only in runs of several SAEs
        d["layer"] = int(f.layer)
    return d


def decision_json(d: Decision) -> dict[str, Any]:
    """A step's Decision as plain values: the candidates (strongest first at
    temperature 1, the chosen one marked) and ``effects[i][j]``, feature i's
    direct-path contribution to candidate j's logit (null: no direct path)."""
    return {"chosen": d.chosen, "flavour": "direct",
            "candidates": [{"token_id": c.token_id, "text": c.text, "prob": c.prob,
                            "sampled_prob": c.sampled_prob, "chosen": c.chosen} for c in d.candidates],
            "effects": [None if row is None else list(row) for row in d.effects]}


def fit_json(f: Fit) -> dict[str, Any]:
    d = {"fve": f.fve, "l0": f.l0, "low": f.low}
    if f.layer is not None:
        d["layer"] = f.layer
    return d


def _decision(d: dict | None) -> Decision | None:
    if not d:
        return None
    cands = tuple(Candidate(int(c["token_id"]), str(c["text"]), float(c["prob"]), _opt_float(c.get("sampled_prob")),
                            bool(c.get("chosen"))) for c in d.get("candidates", []))
    effects = tuple(None if row is None else tuple(float(v) for v in row) for row in d.get("effects", []))
    return Decision(cands, None if d.get("chosen") is None else int(d["chosen"]), effects)


def _fits(rows) -> tuple[Fit, ...]:
    return tuple(Fit(float(f["fve"]), int(f["l0"]), None if f.get("layer") is None else int(f["layer"]))
                 for f in rows or ())


def run_from_json(d: dict[str, Any]) -> tuple[list[TokenStep], GenerationSettings, dict]:
    """The inverse of :func:`run_to_json` (unknown settings keys are ignored);
    reads ``axon-run/1`` files too."""
    if d.get("schema") not in READABLE:
        raise ValueError(f"not an {SCHEMA} (or axon-run/1) run: schema={d.get('schema')!r}")
    known = {f.name for f in fields(GenerationSettings)}
    settings = GenerationSettings(**{k: v for k, v in d.get("settings", {}).items() if k in known})
    steps = [step_from_json(t) for t in d.get("tokens", [])]
    return steps, settings, dict(d.get("meta", {}))


def step_from_json(t: dict[str, Any]) -> TokenStep:
    """The inverse of :func:`token_json`."""
    return TokenStep(
        position=int(t["position"]), token_id=int(t["token_id"]), text=str(t["text"]),
        is_prompt=bool(t["is_prompt"]),
        features=tuple(FeatureHit(int(f["index"]), float(f["activation"]), _opt_float(f.get("attribution")),
                                  None if f.get("layer") is None else int(f["layer"])) for f in t["features"]),
        next_token_id=None if t.get("next_token_id") is None else int(t["next_token_id"]),
        prob=_opt_float(t.get("prob")), sampled_prob=_opt_float(t.get("sampled_prob")),
        notice=t.get("notice"), display=t.get("display"),  # "display": absent in older files
        decision=_decision(t.get("decision")), fit=_fits(t.get("fit")),  # absent in older files
        watched=tuple(float(v) for v in t.get("watched") or ()),
    )


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


@lru_cache(maxsize=1)
def plotly_js() -> str:
    """The installed plotly.js bundle (~4.8 MB), read once."""
    source = resources.files("plotly") / "package_data" / "plotly.min.js"
    return source.read_text(encoding="utf-8").replace("</script", "<\\/script")


def json_for_script(value: Any) -> str:
    """JSON that is safe inside ``<script>``: no ``<``, ``>`` or ``&`` survive raw."""
    text = orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ margin: 0; background: #0b0f19; color: #d8dcf0; font-family: system-ui, sans-serif; }}
h1 {{ font-size: 1.1rem; margin: 0.8rem 1rem 0.4rem; }}
#text {{ white-space: pre-wrap; margin: 0 1rem 0.6rem; font-family: ui-monospace, monospace; }}
#graph {{ width: 100vw; height: 80vh; }}
</style></head>
<body>
<h1>{title}</h1>
<div id="text">{text}</div>
<div id="graph"></div>
<script type="application/json" id="axon-figure">{figure}</script>
<script>{plotly}</script>
<script>
var fig = JSON.parse(document.getElementById("axon-figure").textContent);
Plotly.newPlot("graph", fig.data, fig.layout, {{responsive: true, displaylogo: false,
  plotGlPixelRatio: Math.min(2, Math.max(1, window.devicePixelRatio || 1))}});
</script>
</body></html>
"""


def standalone_html(figure: dict, title: str, text: str) -> str:
    """One HTML file that shows ``figure`` and the generated ``text``, offline."""
    return _PAGE.format(title=html.escape(title), text=html.escape(text),
                        figure=json_for_script(figure), plotly=plotly_js())


def slug(text: str, max_chars: int = 40) -> str:
    """``text`` as lowercase ASCII words joined by ``-``, whole words up to ``max_chars``:
    ``slug("Café, 1969: the Moon!")`` is ``'cafe-1969-the-moon'``; ``slug("東京")`` is ``''``."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    words, out = re.findall(r"[a-z0-9]+", ascii_text.lower()), ""
    for word in words:
        if out and len(out) + 1 + len(word) > max_chars:
            break
        out = f"{out}-{word}" if out else word[:max_chars]
    return out


def download_name(prompt: str, model: str, day: "date", ext: str) -> str:
    """The name a download is saved under: ``axon-<prompt>-<model>-<yyyymmdd>.<ext>``,
    each part a :func:`slug` (a prompt with no ASCII letters or digits is left out),
    so it is safe on any file system and says which run it is."""
    parts = ["axon", slug(prompt), slug(model.replace("/", " "), 60), day.strftime("%Y%m%d")]
    return "-".join(p for p in parts if p) + "." + ext


if __name__ == "__main__":
    # ``python -m axon_core.export replay RUN.json -o run.html [--small]``: the command
    # line lives in axon_core/replay.py (replay builds on this module, so importing it
    # from here would make a circle; run as a script, this file is ``__main__``).
    import runpy

    runpy.run_module("axon_core.replay", run_name="__main__")
