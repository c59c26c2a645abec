"""The inspector and the steering box: what one feature did in the run, and a steering entry for it.

Worked example::

    view = inspect(services, run, 4821)
    view.head            # '### European capitals\\n\\nfeature **#4821** · now 3.20 · peak 5.10 · fired on 4 tokens …'
    view.history         # DataFrame position, activation: the inspector's plot
    view.neighbours      # DataFrame feature, label, npmi, co_fired
    view.steer_feature   # 4821 (None: a feature of another layer than the steered SAE's)
    view.evidence        # HTML: AXON's logit lens, Neuronpedia's examples / lens / density where local
    view.waiting         # True while Neuronpedia's evidence is on its way: refresh_evidence(services, view.picked)
    add_steer(run, 4821, 2, "88:-3")   # ('88:-3, 4821:10.2', None): 2 × its peak of 5.1
    found = inspect_found(services, run, [8, 777, ...])   # a search result that never fired: label, evidence,
    found.steer_feature, found.unit    # 777, (23.4, "its typical maximum on Neuronpedia (maxActApprox 23.4)")
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from ..labels import safe_text
from ..loading import LoadError
from ..run_request import Limits
from .evidence import evidence_view, picked, steer_unit

if TYPE_CHECKING:
    from ..session import RunSession
    from .services import Services

INSPECT_HINT = ("**Inspector.** Generate, then click a node in the graph or a row of the table: "
                "its label, activation over the run, co-firing neighbours and the tokens it pushed show here.")
NEIGHBOUR_COLUMNS = ["feature", "label", "npmi", "co_fired"]
PUSH_COLUMNS = ["token", "attribution"]
HISTORY_COLUMNS = ["position", "activation"]
STEER_LIMIT = Limits().steer_coefficient[1]  # what a run clamps a coefficient to


@dataclass
class Inspection:
    """The inspector's outputs. ``history`` None: clear the plot; ``text`` /
    ``steer_feature`` None: leave the text and the steering box's feature as they are."""

    head: str
    history: pd.DataFrame | None
    neighbours: pd.DataFrame
    pushes: pd.DataFrame
    text: str | None = None
    steer_feature: int | None = None
    evidence: str = ""  # HTML (evidence_view)
    picked: dict | None = None  # the feature shown (evidence.picked), for refresh_evidence and add_steer
    waiting: bool = False  # Neuronpedia's evidence is on its way
    unit: tuple[float, str] | None = None  # what one unit of steering strength is for it (steer_unit)


def empty_inspection(head: str = INSPECT_HINT) -> Inspection:
    return Inspection(head, None, pd.DataFrame(columns=NEIGHBOUR_COLUMNS), pd.DataFrame(columns=PUSH_COLUMNS))


def inspect(services: "Services", run: "RunSession | None", key) -> Inspection:
    """The inspector for one graph node (``key``: the feature's index, or in a
    run of several layers its :func:`node_key`)."""
    if run is None or key is None:
        return empty_inspection()
    try:
        key = int(key)
    except (TypeError, ValueError):
        return empty_inspection()
    try:  # the run's SAE may have left the cache since, and not load again (offline, memory)
        pair_model = services.pairs.get(run.meta["release"], run.meta["sae_id"]).model
    except LoadError as err:
        return empty_inspection(html.escape(str(err)))
    info = run.inspector(key, lambda t: pair_model.tokenizer.decode([t]))
    if info is None:
        return empty_inspection()
    link = f" · [Neuronpedia]({info['url']})" if info["url"] else ""
    where = f" · layer {info['layer']}" if info["layer"] is not None else ""
    head = (f"### {html.escape(info['label'])}\n\nfeature **#{info['index']}**{where} · now {info['activation']:.2f}"
            f" · peak {info['peak']:.2f} · fired on {info['tokens']} tokens{link}")
    # steering acts on the run's primary SAE: a feature of another layer is not put in the steering box
    steerable = info["index"] if not run.layered or info["layer"] == run.primary_layer else None
    pick = picked(services, run, info["index"], info["layer"])
    unit = steer_unit(services, run, pick)
    if pick is not None:
        pick["steerable"] = steerable is not None
    evidence, waiting = evidence_view(services, pick, unit if steerable is not None else None)
    return Inspection(head, pd.DataFrame(info["history"], columns=HISTORY_COLUMNS),
                      pd.DataFrame(info["neighbours"], columns=NEIGHBOUR_COLUMNS).round(3),
                      pd.DataFrame(info["pushes"], columns=PUSH_COLUMNS).round(3),
                      run.tokens_html(highlight=key), steerable, evidence, pick, waiting, unit)


def inspect_found(services: "Services", run: "RunSession | None", row, release=None, sae_id=None) -> Inspection:
    """The inspector for a "Find a feature" result (``[layer, feature, label, ...]``):
    the node's where it fired in the run, else its label, evidence and steering
    unit (a feature that never fired can be steered with)."""
    try:
        index = int(row[1])
        layer = int(row[0]) if row[0] is not None and str(row[0]) not in ("", "nan", "None") else None
    except (TypeError, ValueError, IndexError):
        return empty_inspection()
    if run is not None:
        key = run.key(index, layer)
        if key in run.graph:
            return inspect(services, run, key)
    pick = picked(services, run, index, layer, release, sae_id)
    if pick is None:
        return empty_inspection("That SAE is not in the catalogue: pick one under *Model and SAE*.")
    label = services.labels.known(pick["np_id"], index) if pick["np_id"] else None
    unit = steer_unit(services, run, pick)
    steerable = index if run is None or not run.layered or layer == run.primary_layer else None
    pick["steerable"] = steerable is not None
    evidence, waiting = evidence_view(services, pick, unit if steerable is not None else None)
    where = f" · layer {layer}" if layer is not None else ""
    head = (f"### {html.escape(safe_text(label or f'Feature {index}'))}\n\nfeature **#{index}**{where} · "
            f"{'has not fired in this run' if run is not None else 'no run yet'}")
    if steerable is not None:
        head += "\n\nIt can still be steered with: *Add to steering* below (its strength unit: under the evidence)."
    return Inspection(head, None, pd.DataFrame(columns=NEIGHBOUR_COLUMNS), pd.DataFrame(columns=PUSH_COLUMNS),
                      None, steerable, evidence, pick, waiting, unit)


def refresh_evidence(services: "Services", pick: dict | None, run: "RunSession | None" = None) -> tuple[str | None, bool]:
    """The pick's evidence again (it may have arrived, and with it the typical maximum
    its steering strength counts in), and whether more is on its way; (None, False)
    where nothing is picked."""
    if not pick:
        return None, False
    return evidence_view(services, pick, steer_unit(services, run, pick) if pick.get("steerable") else None)


def key_of_row(run: "RunSession | None", row) -> int | None:
    """The graph key of a features-table row (``[feature, layer, ...]``), or None."""
    if not row or run is None:
        return None
    try:
        return run.key(int(row[0]), int(row[1]) if row[1] is not None else None)
    except (TypeError, ValueError, IndexError):
        return None


def format_steer(spec) -> str:
    """A steering spec as the steering box shows it: ``((1234, 8.5), (88, -3.0))`` → "1234:8.5, 88:-3"."""
    return ", ".join(f"{f}:{c:g}" for f, c in spec)


def add_steer(run: "RunSession | None", feature, strength, current,
              unit: tuple[float, str] | None = None) -> tuple[str, str | None]:
    """The steering box with "feature:coefficient" appended, and a warning (or
    None); the strength is in units of ``unit`` (:func:`~axon_core.page.evidence.steer_unit`
    of the inspected feature: its peak in the run, else its typical maximum),
    or without one of the feature's peak activation in the current run (1 unit
    if it has none)."""
    try:
        feature = int(feature)
    except (TypeError, ValueError):
        return current, "Pick a feature first (click a node or a table row)."
    if unit is not None:
        peak = float(unit[0])
    else:
        key = run.key(feature, run.primary_layer) if run is not None else feature  # the picked SAE's feature
        peak = run.graph.node(key).peak if run is not None and key in run.graph else 1.0
    coef = float(strength) * peak
    warning = None
    if abs(coef) > STEER_LIMIT:
        warning = f"{feature}:{coef:.4g} is beyond ±{STEER_LIMIT:g}: the run clamps it to {math.copysign(STEER_LIMIT, coef):g}."
    entry = f"{feature}:{coef:.4g}"
    return (f"{current.strip()}, {entry}" if current and current.strip() else entry), warning
