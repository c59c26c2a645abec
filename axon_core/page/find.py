"""The "Find a feature" box: the run's SAEs' features by label, local at once, Neuronpedia's by meaning merged in.

Local search (:meth:`LabelService.search`, SQLite FTS5 over the cached
labels) answers at once and offline; Neuronpedia's explanation search (by
meaning, :class:`~axon_core.labels.search.SemanticSearch`) is asked in the
background and merged in when it has answered. Each row says where the
feature is (layer, index), its label, and whether and how strongly it fired
in the current run.

Worked example::

    found = find(services, run, "capital")
    found.rows[0]   # {'layer': 8, 'feature': 4821, 'label': 'European capitals', 'fired': 'yes',
                    #  'peak': 5.1, 'tokens': 4, 'source': 'cached'}
    found.note      # 'Neuronpedia's search by meaning is on its way …'
    found.waiting   # True: call find() again in a moment for the merged list
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..catalogue import DEFAULT_RELEASE, DEFAULT_SAE_ID
from ..labels import safe_text

if TYPE_CHECKING:
    from ..session import RunSession
    from .services import Services

FIND_COLUMNS = ["layer", "feature", "label", "fired", "peak", "tokens", "source"]
FIND_HINT = ("Type a word (or the start of one) to find features of the run's SAE by their labels; "
             "Neuronpedia's search by meaning is merged in when it answers.")
MAX_RESULTS = 20


@dataclass
class Found:
    rows: list[dict] = field(default_factory=list)
    note: str = FIND_HINT
    waiting: bool = False  # Neuronpedia's answer is still on its way


def sae_layers(services: "Services", run: "RunSession | None", release=None, sae_id=None) -> dict[str, int | None]:
    """np_id → layer of the SAEs searched: the run's (every layer of it), else the picked SAE's."""
    if run is not None and run.np_id:
        out = {}
        for layer, np_id in run.np_ids.items():
            if np_id:
                out.setdefault(np_id, run.primary_layer if layer is None else layer)
        return out
    try:
        np_id = services.catalogue.choice(release or DEFAULT_RELEASE, sae_id or DEFAULT_SAE_ID).neuronpedia_id
    except KeyError:
        return {}
    if not np_id:
        return {}
    m = re.match(r"(\d+)-", np_id.split("/", 1)[1])
    return {np_id: int(m.group(1)) if m else None}


def find(services: "Services", run: "RunSession | None", query, release=None, sae_id=None,
         ask: bool = True) -> Found:
    """Search (see the module doc); ``ask``: also ask Neuronpedia (in the background)."""
    text = str(query or "")[:10_000]
    layers = sae_layers(services, run, release, sae_id)
    if not text.strip():
        return Found()
    if not layers:
        return Found(note="This SAE has no Neuronpedia id: its features have no labels to search.")
    labels = services.labels
    np_ids = list(layers)
    rows: dict[tuple[str, int], dict] = {}
    for np_id, index, label in labels.search(np_ids, text, MAX_RESULTS):
        rows[(np_id, index)] = _row(run, layers, np_id, index, label, "cached")
    semantic = getattr(labels, "semantic", None)
    state, hits = "off", None
    if semantic is not None and labels.enabled:
        hits = semantic.peek(np_ids, text)
        if hits is None and ask:
            state = semantic.ask(np_ids, text)
    for np_id, index, desc, _cos in hits or ():
        if np_id in layers and (np_id, index) not in rows and len(rows) < 2 * MAX_RESULTS:
            rows[(np_id, index)] = _row(run, layers, np_id, index, labels.known(np_id, index) or desc,
                                        "Neuronpedia")
    notes = []
    if not rows:
        notes.append(f"No feature's label matches {safe_text(text, 40)!r}.")
        empty = [n for n in np_ids if labels.cached_count(n) == 0]
        if empty:
            notes.append(f"No labels of {', '.join(empty)} are cached yet: they download in the background "
                         "while Neuronpedia can be reached; or run `python -m axon_core.labels prefetch "
                         f"{empty[0]}` (or press *Prefetch all labels for this SAE*) where it can.")
    waiting = state == "queued"
    if waiting:
        notes.append("Neuronpedia's search by meaning is on its way …")
    elif state == "rate limited":
        notes.append("Neuronpedia's search by meaning is paused (its hourly limit): cached labels only.")
    elif semantic is not None and semantic.error and hits is None:
        notes.append(f"{safe_text(semantic.error, 120)}: cached labels only.")
    return Found(list(rows.values()), " ".join(notes) or f"{len(rows)} feature{'' if len(rows) == 1 else 's'} found.", waiting)


def table(found: Found):
    """The results as the page's table (columns FIND_COLUMNS)."""
    import pandas as pd

    return pd.DataFrame(found.rows, columns=FIND_COLUMNS)


def _row(run, layers, np_id, index, label, source) -> dict:
    layer = layers.get(np_id)
    peak, tokens = 0.0, 0
    if run is not None:
        key = run.key(index, layer)
        if key in run.graph:
            node = run.graph.node(key)
            peak, tokens = float(node.peak), int(node.tokens)
    return {"layer": layer, "feature": int(index), "label": safe_text(str(label)), "fired": "yes" if tokens else "no",
            "peak": round(peak, 3), "tokens": tokens, "source": source}


def key_of_found(run: "RunSession | None", row) -> int | None:
    """The graph key of a result row (``[layer, feature, ...]``) where it fired in the run, else None."""
    if run is None or not row:
        return None
    try:
        key = run.key(int(row[1]), int(row[0]) if row[0] is not None else None)
    except (TypeError, ValueError, IndexError):
        return None
    return key if key in run.graph else None
