"""Pinning features to the watch list: from a search result, a table row or a graph node.

The watch list is the text of the page's *Watched features* box (``"7124, 8:88"``,
the same as a link's ``watch=``): Generate reads it like any other input
(:func:`~axon_core.page.request.request_from_inputs`) and the run follows those
features at every token (:mod:`axon_core.watch`). A feature of another layer
than the run's (first) SAE is written ``layer:index``.

Worked example::

    pin("88", layer=8, index=7124, primary_layer=8)     # ('88, 7124', None)
    pin("88", layer=5, index=7, primary_layer=8)        # ('88, 5:7', None)
    pin("88, 7124", layer=8, index=7124, primary_layer=8)   # ('88, 7124', 'L8 #7124 is watched already.')
    pick_of_key(run, 151002068)                         # (8, 7124): a graph node's layer and index
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..features import split_key
from ..query import _parse_watch
from ..run_request import Limits
from ..watch import MAX_WATCH

if TYPE_CHECKING:
    from ..session import RunSession

WATCH_LABEL = (f"Watched features (feature or layer:feature, at most {MAX_WATCH}): followed at every token of the "
               "next run, as sparklines under the text. Click a search result, or inspect a feature and press Watch")


def _keys(text) -> list[tuple[int | None, int]]:
    return list(_parse_watch(str(text or "")[:2000], Limits(), []))


def _write(keys, primary_layer: int | None) -> str:
    return ", ".join(str(i) if la is None or la == primary_layer else f"{la}:{i}" for la, i in keys)


def pin(current, layer: int | None, index: int, primary_layer: int | None) -> tuple[str, str | None]:
    """The watch box's text with feature ``index`` (of the SAE at ``layer``; None:
    the run's) added at the end, and a notice when it was not added."""
    keys = _keys(current)
    norm = [(primary_layer if la is None else la, i) for la, i in keys]
    key = (primary_layer if layer is None else int(layer), int(index))
    name = f"#{key[1]}" if key[0] is None else f"L{key[0]} #{key[1]}"
    if key in norm:
        return _write(keys, primary_layer), f"{name} is watched already."
    if len(keys) >= MAX_WATCH:
        return _write(keys, primary_layer), f"At most {MAX_WATCH} features can be watched: remove one first."
    return _write(keys + [key], primary_layer), None


def pick_of_key(run: "RunSession | None", key) -> tuple[int | None, int] | None:
    """(layer, index) of a graph node or table key of ``run`` (layer: its block), or None."""
    if run is None or key is None:
        return None
    try:
        layer, index = split_key(int(key))
    except (TypeError, ValueError):
        return None
    return (run.primary_layer if layer is None else layer), index


def pick_of_found(row) -> tuple[int | None, int] | None:
    """(layer, index) of a "Find a feature" result row (``[layer, feature, ...]``), or None."""
    try:
        return (None if row[0] is None or row[0] != row[0] else int(row[0])), int(row[1])
    except (TypeError, ValueError, IndexError):
        return None


def primary_layer_of(run: "RunSession | None", sae_id=None) -> int | None:
    """The block of the run's first SAE, or (before any run) of the picked SAE id."""
    if run is not None:
        return run.primary_layer
    from ..catalogue import DEFAULT_SAE_ID
    from ..generation import hook_layer

    return hook_layer(str(sae_id or DEFAULT_SAE_ID))
