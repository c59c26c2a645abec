"""Share links: a run (prompt + settings) <-> a URL query string.

Worked example::

    req = RunRequest(prompt="The capital of France is", model=None, release=None,
                     sae_id=None, settings=GenerationSettings(temperature=0.5, seed=7),
                     autorun=True, steer=((123, 4.5),))
    build_link(base_url_for("Alice/Axon_Demo", None), req)
    # 'https://alice-axon-demo.hf.space/?prompt=The+capital+of+France+is&seed=7'
    # '&temperature=0.5&steer=123%3A4.5&autorun=1'

    req2, notices = parse_query({"prompt": "Hi", "temperature": "9", "top_k": "nan"}, Limits())
    req2.settings.temperature, req2.settings.top_k   # (2.0, 50)
    notices  # ['temperature 9 clamped to 2', "top_k 'nan' is not a number, kept 50"]

The request and its limits are in :mod:`axon_core.run_request`, reading a
query (:func:`parse_query`: anything a browser can send, never raising) in
:mod:`axon_core.query`; this module writes links and re-exports both, so
``from axon_core.share import parse_query, Limits`` keeps working.

Round trip: for any request that :func:`parse_query` could have produced under
the same :class:`Limits`, ``parse_query(parse_qs(build_query(req)), limits) ==
(req, [])``. Use ``parse_qs(..., keep_blank_values=True)`` when custom
``defaults`` carry a model/release/sae_id/steer that a link must clear: those
are written as an empty value (``model=``), which means "none" (``fork=`` too).
"""

from __future__ import annotations

import re
from urllib.parse import urlencode

from .query import parse_query
from .run_request import DEFAULT_REQUEST, NUMBER_KEYS, Limits, RunRequest, fmt_number
from .watch import format_watch

__all__ = [
    "RunRequest",
    "Limits",
    "DEFAULT_REQUEST",
    "parse_query",
    "build_query",
    "build_link",
    "base_url_for",
]

_HOST_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)(:[0-9]{1,5})?")
_SPACE_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")


def build_query(req: RunRequest, defaults: RunRequest | None = None) -> str:
    """The urlencoded query for ``req``: ``prompt`` and ``seed`` always, every
    other parameter only where it differs from ``defaults``
    (:data:`DEFAULT_REQUEST` if None)."""
    d = DEFAULT_REQUEST if defaults is None else defaults
    s, ds = req.settings, d.settings
    pairs: list[tuple[str, str]] = [("prompt", req.prompt)]
    for key in ("model", "release", "sae_id"):
        value, default = getattr(req, key), getattr(d, key)
        if value != default:
            pairs.append((key, value or ""))
    pairs.append(("seed", fmt_number(s.seed)))
    for key, field_name in NUMBER_KEYS.items():
        if key == "seed":
            continue
        value = getattr(s, field_name)
        if value != getattr(ds, field_name):
            pairs.append((key, fmt_number(value)))
    if bool(s.stop_at_eos) != bool(ds.stop_at_eos):
        pairs.append(("stop_at_eos", "1" if s.stop_at_eos else "0"))
    if tuple(req.steer) != tuple(d.steer):
        pairs.append(("steer", ",".join(f"{int(i)}:{fmt_number(c)}" for i, c in req.steer)))
    if bool(req.autorun) != bool(d.autorun):
        pairs.append(("autorun", "1" if req.autorun else "0"))
    if req.at is not None and req.at != d.at:
        pairs.append(("at", str(int(req.at))))
    if bool(req.embed) != bool(d.embed):
        pairs.append(("embed", "1" if req.embed else "0"))
    if tuple(req.layers) != tuple(d.layers):
        pairs.append(("layers", ",".join(str(int(i)) for i in req.layers)))
    if tuple(req.watch) != tuple(d.watch):
        pairs.append(("watch", format_watch(req.watch)))
    if req.fork != d.fork:
        pairs.append(("fork", "" if req.fork is None else f"{int(req.fork[0])}:{int(req.fork[1])}"))
    return urlencode(pairs, encoding="utf-8", errors="replace")


def build_link(base_url: str, req: RunRequest, defaults: RunRequest | None = None) -> str:
    """``base_url`` with ``req``'s query appended."""
    sep = "&" if "?" in base_url else "?"
    return f"{base_url}{sep}{build_query(req, defaults)}"


def base_url_for(space_id: str | None, request_host: str | None, scheme: str = "https") -> str:
    """The public root URL of the app, ending in ``/``.

    ``space_id`` is the ``SPACE_ID`` env var on a Hugging Face Space
    (``"owner/name"`` -> ``https://owner-name.hf.space/``); otherwise
    ``request_host`` (the request's Host header, ``host[:port]``) is used with
    ``scheme`` (http or https). Unusable values fall back to
    ``http://127.0.0.1:7860/``.
    """
    if isinstance(space_id, str) and space_id.count("/") == 1:
        sub = space_id.strip().lower()
        for ch in "/_.":
            sub = sub.replace(ch, "-")
        if _SPACE_RE.fullmatch(sub):
            return f"https://{sub}.hf.space/"
    if isinstance(request_host, str):
        host = request_host.strip()
        m = _HOST_RE.fullmatch(host)
        if m:
            port = m.group(2)
            if port is None or 0 < int(port[1:]) <= 65535:
                sch = scheme.lower() if isinstance(scheme, str) and scheme.lower() in ("http", "https") else "https"
                return f"{sch}://{host}/"
    return "http://127.0.0.1:7860/"
