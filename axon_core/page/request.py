"""Inputs → a run request: every value through the share links' validator, then the SAEs it reads.

What the page (or an API call, or a link) sends is clamped or ignored with a
notice, never an error: :func:`request_from_inputs`. loads the other layers' SAEs a run reads at once.

Worked example::

    req, notices = request_from_inputs(limits, "Hi", "gpt2-small", "gpt2-small-res-jb",
                                       "blocks.8.hook_resid_pre", "9", 50, 0.95, 1.1, 20, 0, 12, 0.1,
                                       layers=[2, 5])
    req.settings.temperature, notices    # (2.0, ['temperature 9 clamped to 2'])
    req.layers                           # (2, 5)
    layer_pairs(services, pair, req.layers, notices)   # the SAEs at layers 2 and 5, loaded
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..generation import hook_layer
from ..loading import LoadError
from ..share import Limits, RunRequest, parse_query

if TYPE_CHECKING:
    from .services import Services

INPUT_NAMES = ["prompt", "model", "release", "sae_id", "temperature", "top_k", "top_p", "repetition_penalty",
               "max_tokens", "seed", "feature_k", "threshold", "steer", "layers", "watch"]


def request_from_inputs(limits: Limits, prompt, model, release, sae_id, temperature, top_k, top_p,
                        repetition_penalty, max_tokens, seed, feature_k, threshold, steer="",
                        layers=None, watch=None) -> tuple[RunRequest, list[str]]:
    """Every input through the same validator as share links: clamped, never raising.
    ``layers``: the layer picker's value (a list) or a link's "2,5,8,11"; ``watch``:
    the watch list's text ("7124, 8:88")."""
    if isinstance(layers, (list, tuple)):
        layers = ",".join(str(x) for x in layers)
    values = [prompt, model, release, sae_id, temperature, top_k, top_p, repetition_penalty, max_tokens,
              seed, feature_k, threshold, steer, layers, watch]
    return parse_query({k: "" if v is None else str(v) for k, v in zip(INPUT_NAMES, values)}, limits)


def layer_pairs(services: "Services", pair, layers, notices: list[str], progress=None) -> list:
    """The other SAEs a run reads at once: for each layer of ``layers`` but the
    primary's, the release's SAE like the primary at that layer (see
    :meth:`Release.by_layer`), at most ``limits.max_layers`` in all. What cannot
    be read is left out with a notice (appended to ``notices``)."""
    max_layers = services.settings.limits.max_layers
    primary = hook_layer(pair.hook_name)
    wanted = [int(x) for x in layers if int(x) != primary]
    if not wanted:
        return []
    if primary is None:
        notices.append(f"layers: {pair.hook_name} is not a block's hook point; read it alone")
        return []
    rel = services.catalogue.by_release.get(pair.choice.release)
    by_layer = rel.by_layer(pair.choice.sae_id) if rel else {}
    missing = [x for x in wanted if x not in by_layer]
    if missing:
        notices.append(f"layers: {pair.choice.release} has no SAE like {pair.choice.sae_id} at "
                       f"{', '.join(map(str, missing))}")
    wanted = [x for x in wanted if x in by_layer]
    if len(wanted) + 1 > max_layers:
        notices.append(f"layers: a run reads at most {max_layers} SAEs; kept "
                       f"{', '.join(map(str, sorted([primary] + wanted[: max_layers - 1])))}")
        wanted = wanted[: max_layers - 1]
    extra = []
    for layer in wanted:
        other = services.pairs.get(pair.choice.release, by_layer[layer], progress=progress)
        if other.model is not pair.model:  # another session switched models meanwhile
            raise LoadError("The model changed while the run's SAEs were loading: press Generate again.")
        extra.append(other)
    return extra
