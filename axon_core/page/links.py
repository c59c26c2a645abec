"""Share links: a link that reruns this run, the embed view's way back, and a page filled from a link.

Worked example::

    base = base_url(None, {"host": "localhost:7860"})        # 'http://localhost:7860/'
    share_link(services, base, 6, "Hi", "gpt2-small", ...)   # at token 6; the page's inputs in order
    # 'http://localhost:7860/?prompt=Hi&seed=0&autorun=1&at=6'
    fill = from_query(services, {"prompt": "Hi", "temperature": "9", "autorun": "1"}, base)
    fill.prompt, fill.temperature, fill.autorun    # ('Hi', 2.0, True)
    fill.notices                                   # ['temperature 9 clamped to 2']
"""

from __future__ import annotations

import dataclasses
import html
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

from ..catalogue import DEFAULT_MODEL, DEFAULT_RELEASE, DEFAULT_SAE_ID
from ..share import base_url_for, build_link, parse_query
from ..watch import format_watch
from .inspector import format_steer
from .picker import layer_choices, release_names
from .request import request_from_inputs
from .settings import EXAMPLES

if TYPE_CHECKING:
    from .services import Services


def base_url(space_id: str | None, headers: Mapping[str, str] | None) -> str:
    """Where this page is served, from a request's headers (a proxy's forwarded ones first)."""
    host = headers.get("x-forwarded-host") or headers.get("host") if headers is not None else None
    scheme = (headers.get("x-forwarded-proto") if headers is not None else None) or "http"
    return base_url_for(space_id, host, scheme)


def share_link(services: "Services", base: str, at: int | None, *inputs, fork: tuple[int, int] | None = None) -> str:
    """A link that reopens and reruns this prompt with these settings (``inputs``:
    :func:`~axon_core.page.request.request_from_inputs`'s, from ``prompt`` to
    ``layers``, then optionally ``watch``), showing token ``at`` when the graph is scrubbed to one, and the
    ``fork`` (position, token id) shown beside the run, if any."""
    req, _ = request_from_inputs(services.settings.limits, *inputs)
    return build_link(base, dataclasses.replace(req, autorun=True, at=at, fork=fork))


def embed_link(services: "Services", params: Mapping[str, str], base: str) -> str:
    """The embed view's "Open in AXON" link: the full page, same run."""
    req, _ = parse_query(params, services.settings.limits)
    req = dataclasses.replace(req, embed=False, autorun=True)
    url = html.escape(build_link(base, req), quote=True)
    return f'<a class="axon-open" href="{url}" target="_blank" rel="noopener">Open in AXON ↗</a>'


@dataclass
class PageFill:
    """What a link puts in the page's inputs (in their order), and what it could not."""

    prompt: str
    model: str
    release_choices: list[str]
    release: str
    sae_id_choices: list[str]
    sae_id: str
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float
    max_tokens: int
    seed: int
    feature_k: int
    threshold: float
    steer: str
    autorun: bool
    at: int | None
    embed_open: str  # the embed view's link to the full page, or ""
    layer_choices: list[int]
    layers: list[int]
    watch: str  # the watch list's text ("7124, 8:88")
    notices: list[str]  # about the link's values (shown as "Link: ...")
    layer_notice: str | None = None  # layers the picked SAE's release does not have
    fork: tuple[int, int] | None = None  # the fork to show beside the run once it is done


def from_query(services: "Services", params: Mapping[str, str], base: str) -> PageFill:
    """Fill the inputs from the page's query string; start at once with autorun=1."""
    catalogue = services.catalogue
    req, notices = parse_query(params, services.settings.limits)
    s = req.settings
    # The release decides the model (the dropdowns must agree, or Generate refuses them):
    # a valid release wins, else the first release of a valid model, else the defaults.
    if req.release in catalogue.by_release:
        release = req.release
        model = catalogue.by_release[release].model
    elif req.model in catalogue.models():
        model = req.model
        release = catalogue.releases(model)[0].release
    else:
        model, release = DEFAULT_MODEL, DEFAULT_RELEASE
    ids = catalogue.by_release[release].sae_ids()
    sae_id = req.sae_id if req.sae_id in ids else (DEFAULT_SAE_ID if DEFAULT_SAE_ID in ids else ids[0])
    if req.model and req.model != model:
        notices.append(f"model {req.model} does not go with release {release}, using {model}"
                       if req.model in catalogue.models() else f"model not in the catalogue, using {model}")
    if req.release and req.release != release:
        notices.append(f"release not in the catalogue, using {release}")
    if req.sae_id and req.sae_id != sae_id:
        notices.append(f"sae_id not in release {release}, using {sae_id}")
    choices = layer_choices(catalogue, release, sae_id)
    layers = [x for x in req.layers if x in choices]
    layer_notice = None
    if len(layers) < len(req.layers):
        layer_notice = (f"release {release} has no SAE like {sae_id} at layers "
                        f"{', '.join(str(x) for x in req.layers if x not in choices)}")
    return PageFill(
        req.prompt if "prompt" in params else EXAMPLES[0], model, release_names(catalogue, model), release, ids,
        sae_id, s.temperature, s.top_k, s.top_p, s.repetition_penalty, s.max_new_tokens, s.seed, s.feature_k,
        s.activation_threshold, format_steer(req.steer), bool(req.autorun and "prompt" in params), req.at,
        embed_link(services, params, base) if req.embed else "", choices, layers, format_watch(req.watch), notices,
        layer_notice, req.fork)
