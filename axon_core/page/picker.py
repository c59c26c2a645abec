"""The model and SAE picker: the catalogue's choices, loading a pick, prefetching its labels.

Worked example::

    release_names(catalogue, "gpt2-small")[:1]            # ['gpt2-small-res-jb']
    sae_ids_for(catalogue, "gpt2-small-res-jb")           # ([... 'blocks.8.hook_resid_pre' ...], 'blocks.8.hook_resid_pre')
    layer_choices(catalogue, "gpt2-small-res-jb", "blocks.8.hook_resid_pre")   # [0, 1, ..., 11]
    kept_layers([2, 5, 99], [2, 5, 8])                    # [2, 5]
    load_choice(services, "gpt2-small-res-jb", "blocks.2.hook_resid_pre")
    # ('<b …>cpu</b> · loaded gpt2-small-res-jb / blocks.2.hook_resid_pre', None)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ..catalogue import DEFAULT_SAE_ID, Catalogue
from ..loading import LoadError
from .status import status_line

if TYPE_CHECKING:
    from .services import Services


def release_names(catalogue: Catalogue, model) -> list[str]:
    """The releases of ``model`` (none for no model)."""
    return [r.release for r in catalogue.releases(model)] if model else []


def sae_ids_for(catalogue: Catalogue, release) -> tuple[list[str], str | None]:
    """The SAE ids of ``release`` and the one to pick: the default where it has it."""
    rel = catalogue.by_release.get(release)
    ids = rel.sae_ids() if rel else []
    return ids, DEFAULT_SAE_ID if DEFAULT_SAE_ID in ids else (ids[0] if ids else None)


def layer_choices(catalogue: Catalogue, release, sae_id) -> list[int]:
    """Layers whose SAE of ``release`` a run of ``sae_id`` can read at once
    (its own included: picking it changes nothing)."""
    rel = catalogue.by_release.get(release)
    return list(rel.by_layer(sae_id)) if rel and sae_id else []


def kept_layers(current, choices: list[int]) -> list[int]:
    """The layer picker after the SAE changed: what still applies of its value."""
    return [x for x in (current or []) if x in choices]


def load_choice(services: "Services", release, sae_id,
                progress: Callable[[float, str], Any] | None = None) -> tuple[str, str | None]:
    """Load a pick at once (so Generate then starts without waiting): the
    status line, and a warning where it cannot load."""
    if not release or not sae_id:
        return status_line(services), None
    try:
        pair = services.pairs.get(release, sae_id, progress=progress)
    except LoadError as err:
        return status_line(services, extra=str(err)), str(err)
    services.bulk_labels(pair)  # its labels, in bulk, in the background
    return status_line(services, extra=f"loaded {pair.choice.release} / {pair.choice.sae_id}"), None


def prefetch_labels(services: "Services", release, sae_id,
                    progress: Callable[..., Any] | None = None, evidence: bool = False) -> str:
    """Download every label of a pick's SAE from Neuronpedia (resumable), and with
    ``evidence`` its top examples, logit lens and density too; the status line
    says how many. ``progress(done, total)`` per batch (``progress(done, total,
    folder)`` for the evidence folders)."""
    try:
        np_id = services.catalogue.choice(release, sae_id).neuronpedia_id
    except KeyError as err:
        return status_line(services, extra=str(err.args[0]))
    if not np_id:
        return status_line(services, extra="This SAE has no Neuronpedia id: its features keep their numbers.")
    try:
        n = services.labels.prefetch(np_id, progress=progress)
    except Exception as err:  # noqa: BLE001
        return status_line(services, extra=f"Label prefetch failed: {type(err).__name__}: {str(err)[:120]}")
    if not evidence:
        return status_line(services, extra=f"{n:,} labels cached for {np_id}")
    try:
        got = services.labels.evidence.prefetch(np_id, (lambda f, d, t: progress(d, t, f)) if progress else None)
    except Exception as err:  # noqa: BLE001
        return status_line(services, extra=f"{n:,} labels cached for {np_id}; evidence prefetch stopped "
                                           f"(run it again to resume): {type(err).__name__}: {str(err)[:120]}")
    return status_line(services, extra=f"{n:,} labels cached for {np_id}, with {got['features']:,} logit lenses "
                                       f"and {got['activations']:,} features' examples")
