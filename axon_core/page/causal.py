"""The causal check, for the token shown: ablate its strongest features at each
earlier layer, measure the later layers (:func:`axon_core.depth.causal_check`),
and say what was found.

Worked example::

    view = causal_for_token(services, run)     # a run of layers 2, 5, 8, scrubbed to token 6
    view.table.columns.tolist()                # CAUSAL_COLUMNS
    view.note    # "Token 6 (' Paris'): 16 ablations in 240 ms. In the graph: measured effects (…)"
    view.figure is not None                    # the graph redrawn with the measured effects as edges
    causal_for_token(services, None).note      # 'Generate first: there is no token to test yet.'
"""

from __future__ import annotations

import contextlib
import html
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from ..depth import causal_check, run_tokens
from ..generation import forward_lock
from ..loading import LoadError
from ..residuals import FastWeights
from ..steering import steering_edit

if TYPE_CHECKING:
    from ..session import RunSession
    from .services import Services

log = logging.getLogger("axon")

CAUSAL_COLUMNS = ["source", "source_label", "target", "target_label", "npmi", "virtual_weight", "effect"]
CAUSAL_HINT = ("**Which earlier features caused these?** Read several layers (Model and SAE → Layers), generate, "
               "pick a token (slider or click), then test it: each of its 8 strongest features at an earlier layer "
               "is ablated in turn (that position re-run from there up) and every later layer's features on the "
               "token are measured. Co-firing (NPMI), virtual weight and measured effect side by side.")


@dataclass
class CausalView:
    """``figure`` None: the graph stays as it is (and its edge picker too)."""

    table: pd.DataFrame
    note: str
    figure: str | None = None

    @classmethod
    def message(cls, note: str) -> "CausalView":
        return cls(pd.DataFrame(columns=CAUSAL_COLUMNS), note)


def causal_for_token(services: "Services", run: "RunSession | None") -> CausalView:
    """The check at the token shown (or the newest), drawn as the graph's edges
    ("causal") and listed beside co-firing and virtual weight."""
    if run is None or not run.steps:
        return CausalView.message("Generate first: there is no token to test yet.")
    if not run.layered:
        return CausalView.message("This run reads one layer. Pick more layers under "
                                  "*Model and SAE → Layers* and generate again.")
    if not run.caught_up:
        return CausalView.message("Wait for the run to finish, then test a token.")
    position = run.at if run.at is not None else run.steps[-1].position
    try:
        pair = services.pairs.get(run.meta["release"], run.meta["sae_id"])
    except LoadError as err:
        return CausalView.message(html.escape(str(err)))
    t = time.perf_counter()
    try:
        checks = depth_checks(pair, run, position)
    except (ValueError, RuntimeError) as err:
        log.exception("causal check failed")
        return CausalView.message(f"The check failed ({type(err).__name__}): {html.escape(str(err)[:200])}")
    ms = 1e3 * (time.perf_counter() - t)
    rows = run.set_causal(checks)
    run.edge_kind = "causal"
    token = next((s.text for s in run.steps if s.position == position), "")
    note = (f"Token {position} ({html.escape(repr(token))}): {sum(len(c.features) for c in checks)} ablations "
            f"in {ms:.0f} ms. In the graph: measured effects (blue: the earlier feature helped the later one "
            f"fire, red: it held it back; width: size).")
    return CausalView(pd.DataFrame(rows, columns=CAUSAL_COLUMNS).round(3), note, run.graph_log(relayout=False))


def depth_checks(pair, run: "RunSession", position: int):
    """One :func:`causal_check` per earlier layer of ``run`` at ``position``."""
    model = pair.model
    bos = getattr(model.tokenizer, "bos_token_id", None)
    tokens = run_tokens(run.steps, bos)
    edits = {pair.hook_name: steering_edit(pair.sae, run.meta["steer"])} if run.meta.get("steer") else None
    layers = sorted(run.by_layer)
    fast = pair.fast_weights if FastWeights.supports(model) else None
    checks = []
    with forward_lock(model, None) if fast is None else contextlib.nullcontext():
        for i, layer in enumerate(layers[:-1]):
            checks.append(causal_check(model, tokens, position, run.by_layer[layer],
                                       [run.by_layer[x] for x in layers[i + 1:]], k=8,
                                       threshold=run.settings.activation_threshold,
                                       weights=fast, edits=edits))
    return checks
