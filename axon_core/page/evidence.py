"""The inspector's evidence for a picked feature, and the unit its steering strength is counted in.

A *pick* is a plain dict naming one feature of one SAE (``np_id``, ``index``,
``layer``, and the ``release`` / ``sae_id`` that load it): a node of the run,
a table row, or a search result that never fired. :func:`evidence_view`
renders, as HTML, AXON's own logit lens (from the loaded weights: always
there, offline too), and what Neuronpedia publishes where it is local: its
logit lens, density, typical maximum and top-activating examples (each token
shaded by its activation, the max token marked). What is not local yet is
fetched in the background (:class:`~axon_core.labels.evidence_fetch.EvidenceService`);
``pending`` then says to look again. Every third-party string (tokens,
labels) is escaped here.

:func:`steer_unit` is what one unit of steering strength means for a pick:
its peak in the run where it fired, else Neuronpedia's ``maxActApprox`` where
known, else ``DECODER_DEFAULT``: √d_model / ‖W_dec[f]‖, a push of the size of
a LayerNorm-normalised residual (norm √d_model).

Worked example::

    pick = picked(services, run, 4821, 8)
    html, pending = evidence_view(services, pick)   # '<div class="axon-evidence">…', True while Neuronpedia's is on its way
    steer_unit(services, run, pick)                 # (23.4, "its typical maximum on Neuronpedia (maxActApprox 23.4)")
"""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING

from ..labels.evidence import Evidence
from ..logit_lens import logit_lens

if TYPE_CHECKING:
    from ..session import RunSession
    from .services import Services

DECODER_DEFAULT = "√d_model / ‖W_dec[f]‖"
LENS_K = 8


def picked(services: "Services", run: "RunSession | None", index: int, layer: int | None,
           release=None, sae_id=None) -> dict | None:
    """The pick of feature ``index`` at ``layer`` of the run (or, without a run, of the
    picked SAE ``release`` / ``sae_id``); None where that SAE is not known."""
    if run is not None:
        release, sae_id = run.meta.get("release"), run.meta.get("sae_id")
        np_id = run.np_ids.get(layer if run.layered else None, run.np_id)
        if run.layered and layer in run.by_layer:
            ls = run.by_layer[layer]
            if ls.release and ls.sae_id:
                release, sae_id = ls.release, ls.sae_id
        else:
            layer = run.primary_layer
    else:
        try:
            np_id = services.catalogue.choice(release, sae_id).neuronpedia_id
        except (KeyError, TypeError):
            return None
    if not release or not sae_id:
        return None
    return {"np_id": np_id, "index": int(index), "layer": layer, "release": release, "sae_id": sae_id}


def _pair(services: "Services", pick: dict):
    return services.pairs.get(pick["release"], pick["sae_id"])


def steer_unit(services: "Services", run: "RunSession | None", pick: dict | None) -> tuple[float, str]:
    """(activation units per unit of strength, what that unit is, in words) for a pick."""
    if pick is None:
        return 1.0, "1 activation unit (no feature picked)"
    if run is not None:
        key = run.key(pick["index"], pick["layer"] if run.layered else None)
        if key in run.graph and run.graph.node(key).peak > 0:
            peak = float(run.graph.node(key).peak)
            return peak, f"its peak in this run ({peak:.3g})"
    fetcher = getattr(services.labels, "evidence", None)
    ev = fetcher.local(pick["np_id"], pick["index"]) if pick.get("np_id") and fetcher else Evidence()
    if ev.max_act:
        return ev.max_act, f"its typical maximum on Neuronpedia (maxActApprox {ev.max_act:.3g})"
    try:
        sae = _pair(services, pick).sae
        norm = float(sae.W_dec[pick["index"]].detach().norm())
        unit = math.sqrt(sae.W_dec.shape[1]) / norm if norm > 0 else 1.0
    except Exception:  # noqa: BLE001 - the SAE no longer loads (offline, memory): one activation unit
        return 1.0, "1 activation unit (the SAE is not loaded)"
    return unit, f"no typical maximum known: {DECODER_DEFAULT} = {unit:.3g}"


def evidence_view(services: "Services", pick: dict | None, unit: tuple[float, str] | None = None) -> tuple[str, bool]:
    """(the evidence as HTML, whether more is on its way) for a pick; with ``unit``
    (:func:`steer_unit`) it first says what one unit of steering strength is."""
    if pick is None:
        return "", False
    parts, pending = [], False
    if unit is not None:
        parts.append(f'<div class="axon-ev-steer">Steering strength 1 = {html.escape(unit[1])}</div>')
    try:
        pair = _pair(services, pick)
        sae, hook, model = pair.sae, pair.hook_name, pair.model
        lens = logit_lens(model, sae, hook, pick["index"], LENS_K)
        decode = (lambda t: model.tokenizer.decode([t])) if model.tokenizer is not None else (lambda t: f"#{t}")
    except Exception as err:  # noqa: BLE001 - a LoadError, or an index outside the SAE
        lens, decode = None, str
        parts.append(f'<div class="axon-ev-note">AXON\'s logit lens: {html.escape(str(err)[:200])}</div>')
    np_id = pick.get("np_id")
    fetcher = getattr(services.labels, "evidence", None)  # None: a label service without evidence (offline stand-ins)
    ev = fetcher.get(np_id, pick["index"]) if np_id and fetcher else Evidence()
    pending = bool(ev.missing) and fetcher is not None and fetcher.pending(np_id, pick["index"])
    axon = None if lens is None else ([(decode(t), v) for t, v in lens.pos], [(decode(t), v) for t, v in lens.neg])
    parts.append('<div class="axon-ev-lenses">')
    parts.append(_lens_html("Logit lens · AXON (W_dec[f] · W_U through the final norm, from the loaded weights)",
                            axon, "this SAE's decoder writes no residual: no direct logit lens"))
    if np_id:
        np_lens = None if "lens" in ev.missing else (ev.pos or (), ev.neg)
        parts.append(_lens_html("Logit lens · Neuronpedia", np_lens,
                                "on its way …" if pending else "not local (offline, or not published)"))
    parts.append("</div>")
    if np_id and "lens" not in ev.missing:
        dens = f"fires on {100 * ev.density:.3g} % of tokens" if ev.density else "density unknown"
        top = f" · typical maximum {ev.max_act:.3g}" if ev.max_act else ""
        parts.append(f'<div class="axon-ev-density">Neuronpedia: {dens}{top}</div>')
    if np_id:
        parts.append(_examples_html(ev, pending))
    else:
        parts.append('<div class="axon-ev-note">This SAE is not on Neuronpedia: no published examples.</div>')
    return '<div class="axon-evidence">' + "".join(parts) + "</div>", pending


def _lens_html(title: str, lens, empty: str) -> str:
    out = [f'<div class="axon-ev-lens"><div class="axon-ev-title">{html.escape(title)}</div>']
    if lens is None or not (lens[0] or lens[1]):
        out.append(f'<div class="axon-ev-note">{html.escape(empty)}</div></div>')
        return "".join(out)
    for cls, side in (("axon-ev-pos", lens[0]), ("axon-ev-neg", lens[1])):
        cells = "".join(f'<span class="axon-ev-tok" title="{v:+.3g}">{_tok(s)}</span>' for s, v in side)
        out.append(f'<div class="{cls}">{"▲" if cls == "axon-ev-pos" else "▼"} {cells}</div>')
    out.append("</div>")
    return "".join(out)


_BLANK = {" ": "␣", "\n": "↵", "\r": "↵", "\t": "⇥"}


def _tok(s: str) -> str:
    """A token as text: escaped, its newlines and tabs made visible (and, in a token
    of whitespace only, its spaces too: not an empty box)."""
    s = str(s)
    if s.isspace():
        return html.escape("".join(_BLANK.get(c, "·") for c in s), quote=True)
    return html.escape(s.replace("\n", "↵").replace("\t", "⇥"), quote=True)


def _examples_html(ev: Evidence, pending: bool) -> str:
    head = '<div class="axon-ev-title">Top-activating examples · Neuronpedia</div>'
    if "examples" in ev.missing:
        note = "on its way …" if pending else "not local (offline, or not published)"
        return f'<div class="axon-ev-examples">{head}<div class="axon-ev-note">{note}</div></div>'
    if not ev.examples:
        return f'<div class="axon-ev-examples">{head}<div class="axon-ev-note">none published</div></div>'
    rows = []
    for ex in ev.examples:
        top = ex.max_value if ex.max_value > 0 else max(ex.values, default=1.0) or 1.0
        spans = []
        for i, (tok, v) in enumerate(zip(ex.tokens, ex.values)):
            alpha = min(1.0, max(0.0, v / top)) if top > 0 else 0.0
            mark = ' axon-ex-max' if i == ex.max_index else ""
            spans.append(f'<span class="axon-ex-tok{mark}" style="background:rgba(255,140,0,{alpha:.2f})" '
                         f'title="{v:.3g}">{_tok(tok)}</span>')
        rows.append(f'<div class="axon-ex"><span class="axon-ex-peak">{ex.max_value:.3g}</span>{"".join(spans)}</div>')
    return f'<div class="axon-ev-examples">{head}{"".join(rows)}</div>'
