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

:func:`parse_query` accepts anything a browser can send and never raises:
out-of-range numbers are clamped, unreadable values are ignored (the default is
kept) and each correction is reported as a short plain-text notice. Notices
echo at most ~40 characters of the user's value, with control characters
removed; they are *plain text*, so escape them before rendering as HTML.

``model``, ``release`` and ``sae_id`` are only cleaned here (control
characters removed, whitespace stripped, length limited; empty means "not
given", i.e. ``None``). Whether they name something in the catalogue is for
the caller to check.

Round trip: for any request that :func:`parse_query` could have produced under
the same :class:`Limits`, ``parse_query(parse_qs(build_query(req)), limits) ==
(req, [])``. Use ``parse_qs(..., keep_blank_values=True)`` when custom
``defaults`` carry a model/release/sae_id/steer that a link must clear: those
are written as an empty value (``model=``), which means "none".
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
from dataclasses import dataclass, replace
from typing import Any, Mapping
from urllib.parse import urlencode

from .generation import GenerationSettings

__all__ = [
    "RunRequest",
    "Limits",
    "DEFAULT_REQUEST",
    "parse_query",
    "build_query",
    "build_link",
    "base_url_for",
]


@dataclass(frozen=True)
class RunRequest:
    """Everything a share link can carry. ``steer`` is (feature index,
    coefficient) pairs with distinct indices, for steering."""

    prompt: str
    model: str | None
    release: str | None
    sae_id: str | None
    settings: GenerationSettings
    autorun: bool
    steer: tuple[tuple[int, float], ...] = ()
    at: int | None = None  # show the graph as it was at this token position
    embed: bool = False  # the embed view: text, graph and a link to the full page
    layers: tuple[int, ...] = ()  # blocks whose SAEs the run reads at once (ascending, distinct); () → one SAE


DEFAULT_REQUEST = RunRequest(
    prompt="", model=None, release=None, sae_id=None,
    settings=GenerationSettings(), autorun=False,
)

_ENV_PROMPT = "AXON_MAX_PROMPT_CHARS"
_ENV_TOKENS = "AXON_MAX_NEW_TOKENS"
MAX_POSITION = 10**6  # the largest token position a link may name
TOP_P_FLOOR = 0.01  # what top_p <= 0 is clamped to (its range is (0, 1])


@dataclass(frozen=True)
class Limits:
    """What a link may ask for. Ranges are inclusive ``(low, high)`` except
    ``top_p``, whose low end is exclusive; ``max_new_tokens`` ranges over
    ``[1, max_new_tokens]``."""

    max_prompt_chars: int = 2000
    max_new_tokens: int = 200
    temperature: tuple[float, float] = (0.0, 2.0)
    top_k: tuple[int, int] = (0, 1000)
    top_p: tuple[float, float] = (0.0, 1.0)
    repetition_penalty: tuple[float, float] = (1.0, 2.0)
    seed: tuple[int, int] = (0, 2**31 - 1)
    feature_k: tuple[int, int] = (1, 64)
    activation_threshold: tuple[float, float] = (0.0, 100.0)
    max_name_chars: int = 200  # model / release / sae_id
    max_steer: int = 8
    steer_index: tuple[int, int] = (0, 2**31 - 1)  # out of range: entry skipped
    steer_coefficient: tuple[float, float] = (-100.0, 100.0)  # clamped
    max_layers: int = 4  # SAEs read at once (``layers``)
    layer: tuple[int, int] = (0, 127)  # out of range: entry skipped

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Limits":
        """Defaults, with ``AXON_MAX_PROMPT_CHARS`` / ``AXON_MAX_NEW_TOKENS``
        from ``env`` (``os.environ`` if None) when they are positive integers."""
        env = os.environ if env is None else env
        base = cls()

        def read(name: str, default: int) -> int:
            raw = env.get(name)
            try:
                value = int(str(raw).strip()) if raw is not None else default
            except (TypeError, ValueError):
                return default
            return value if value >= 1 else default

        return cls(
            max_prompt_chars=read(_ENV_PROMPT, base.max_prompt_chars),
            max_new_tokens=read(_ENV_TOKENS, base.max_new_tokens),
        )

    def range_of(self, name: str) -> tuple[float, float]:
        """The (low, high) range of one :class:`GenerationSettings` number."""
        if name == "max_new_tokens":
            return (1, self.max_new_tokens)
        return getattr(self, name)

    def clamp_settings(self, settings: GenerationSettings) -> GenerationSettings:
        """``settings`` pulled into range (silently; for trusted defaults)."""
        changes: dict[str, Any] = {}
        for name in _INT_FIELDS + _FLOAT_FIELDS:
            value = getattr(settings, name)
            fixed, _ = _clamp(self, name, value)
            if fixed != value or type(fixed) is not type(value):
                changes[name] = fixed
        if not isinstance(settings.stop_at_eos, bool):
            changes["stop_at_eos"] = bool(settings.stop_at_eos)
        return replace(settings, **changes) if changes else settings


# ---------------------------------------------------------------- helpers

_INT_FIELDS = ("max_new_tokens", "top_k", "seed", "feature_k")
_FLOAT_FIELDS = ("temperature", "top_p", "repetition_penalty", "activation_threshold")

# query key -> GenerationSettings field
_NUMBER_KEYS = {
    "seed": "seed",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "repetition_penalty": "repetition_penalty",
    "max_tokens": "max_new_tokens",
    "feature_k": "feature_k",
    "threshold": "activation_threshold",
}
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_MAX_NUMBER_CHARS = 100
_ECHO_CHARS = 40

# C0/C1 controls except \t and \n, plus lone surrogates (not encodable as UTF-8).
_PROMPT_BAD = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_INT_RE = re.compile(r"[+-]?[0-9]+", re.ASCII)
_LAYER_RE = re.compile(r"\s*([0-9]{1,12})\s*", re.ASCII)
_STEER_RE = re.compile(r"\s*([0-9]{1,12})\s*:\s*(\S{1,64})\s*", re.ASCII)
_HOST_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)(:[0-9]{1,5})?")
_SPACE_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")


def _no_controls(text: str) -> str:
    """``text`` without any Unicode category-C character (controls, format,
    surrogates, private use, unassigned)."""
    return "".join(c for c in text if unicodedata.category(c)[0] != "C")


def _echo(raw: str) -> str:
    """At most ~40 characters of a user value, safe to put in a notice."""
    clean = _no_controls(raw[: _ECHO_CHARS * 10]).strip()
    if len(clean) > _ECHO_CHARS or len(raw) > _ECHO_CHARS * 10:
        return clean[:_ECHO_CHARS] + "…"
    return clean


def _fmt(x: float | int) -> str:
    """Shortest exact text for a number (``2`` rather than ``2.0``)."""
    if isinstance(x, bool):
        return "1" if x else "0"
    if isinstance(x, int):
        return str(x)
    if math.isfinite(x) and x == int(x) and abs(x) < 2**53:
        return str(int(x))
    return repr(float(x))


def _value(params: Any, key: str, notices: list[str]) -> str | None:
    """The (last) value for ``key`` as text, or None when absent/unusable."""
    try:
        raw = params.get(key)
    except Exception:  # a hostile or odd mapping
        return None
    if isinstance(raw, (list, tuple)):
        raw = raw[-1] if raw else None
    if raw is None:
        return None
    if isinstance(raw, str):
        return raw
    if isinstance(raw, (bytes, bytearray)):
        return bytes(raw).decode("utf-8", errors="replace")
    if isinstance(raw, (bool, int, float)):
        try:
            return str(raw)
        except ValueError:  # an int too long to print
            notices.append(f"{key}: value too long, ignored")
            return None
    notices.append(f"{key}: unsupported value ignored")
    return None


def _parse_number(text: str) -> float | int | None:
    """An int or float from text; None when it is not a number (NaN counts
    as not a number; ±inf is a number, to be clamped, and so is an integer
    too long to read, e.g. 120 digits)."""
    text = text.strip()
    if not text:
        return None
    if len(text) > _MAX_NUMBER_CHARS:
        if _INT_RE.fullmatch(text):
            return -math.inf if text.startswith("-") else math.inf
        return None
    if _INT_RE.fullmatch(text):
        return int(text)
    try:
        value = float(text)
    except (ValueError, OverflowError):
        return None
    return None if math.isnan(value) else value


def _clamp(limits: Limits, name: str, value: float | int) -> tuple[float | int, bool]:
    """``value`` converted to the field's type and clamped; (result, clamped?)."""
    lo, hi = limits.range_of(name)
    if name in _INT_FIELDS:
        if isinstance(value, float):
            if math.isnan(value):
                value = lo
            elif math.isinf(value):
                return (hi if value > 0 else lo), True
            else:
                value = int(round(value))
        value = int(value)
        if value < lo:
            return int(lo), True
        if value > hi:
            return int(hi), True
        return value, False
    value = float(value)
    if math.isnan(value):
        return float(lo if name != "top_p" else min(TOP_P_FLOOR, hi)), True
    if name == "top_p" and value <= lo:
        return float(min(TOP_P_FLOOR, hi)), True
    if value < lo:
        return float(lo), True
    if value > hi:
        return float(hi), True
    return value, False


def _clean_name(raw: str, key: str, limits: Limits, notices: list[str]) -> str | None:
    name = _no_controls(raw).strip()
    if len(name) > limits.max_name_chars:
        notices.append(f"{key} truncated to {limits.max_name_chars} characters")
        name = name[: limits.max_name_chars].strip()
    return name or None


def _clean_prompt(raw: str, limits: Limits, notices: list[str] | None) -> str:
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    text, removed = _PROMPT_BAD.subn("", text)
    if removed and notices is not None:
        notices.append(f"prompt: removed {removed} control character{'s' if removed != 1 else ''}")
    if len(text) > limits.max_prompt_chars:
        if notices is not None:
            notices.append(f"prompt truncated to {limits.max_prompt_chars} characters")
        text = text[: limits.max_prompt_chars]
    return text


def _parse_steer(raw: str, limits: Limits, notices: list[str]) -> tuple[tuple[int, float], ...]:
    entries: list[tuple[int, float]] = []
    seen: set[int] = set()
    bad: list[str] = []
    dropped = 0
    clamped: list[str] = []
    lo_i, hi_i = limits.steer_index
    lo_c, hi_c = limits.steer_coefficient
    for part in raw.split(","):
        if not part.strip():
            continue
        m = _STEER_RE.fullmatch(part)
        coef = _parse_number(m.group(2)) if m else None
        index = int(m.group(1)) if m else -1
        if coef is None or not (lo_i <= index <= hi_i) or index in seen:
            bad.append(part)
            continue
        if len(entries) >= limits.max_steer:
            dropped += 1
            continue
        coef = float(coef)
        fixed = min(max(coef, lo_c), hi_c)
        if fixed != coef:
            clamped.append(f"{index}:{_echo(m.group(2))}")
        seen.add(index)
        entries.append((index, fixed))
    if bad:
        more = f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""
        notices.append(f"steer: skipped bad entry '{_echo(bad[0])}'{more}")
    if dropped:
        notices.append(f"steer: kept the first {limits.max_steer} entries, dropped {dropped}")
    if clamped:
        more = f" (+{len(clamped) - 1} more)" if len(clamped) > 1 else ""
        notices.append(f"steer: coefficient {clamped[0]}{more} clamped to [{_fmt(lo_c)}, {_fmt(hi_c)}]")
    return tuple(entries)


def _parse_layers(raw: str, limits: Limits, notices: list[str]) -> tuple[int, ...]:
    """``"2,5,8,11"`` → (2, 5, 8, 11): distinct, ascending, in range, at most ``max_layers``."""
    found: list[int] = []
    bad: list[str] = []
    lo, hi = limits.layer
    for part in raw.split(","):
        if not part.strip():
            continue
        m = _LAYER_RE.fullmatch(part)
        if m is None or not lo <= int(m.group(1)) <= hi:
            bad.append(part)
        elif int(m.group(1)) not in found:
            found.append(int(m.group(1)))
    if bad:
        more = f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""
        notices.append(f"layers: skipped '{_echo(bad[0])}'{more}")
    if len(found) > limits.max_layers:
        notices.append(f"layers: kept the first {limits.max_layers}, dropped {len(found) - limits.max_layers}")
        found = found[: limits.max_layers]
    return tuple(sorted(found))


# ---------------------------------------------------------------- public API


def parse_query(
    params: Mapping[str, str | list[str]],
    limits: Limits | None = None,
    defaults: RunRequest | None = None,
) -> tuple[RunRequest, list[str]]:
    """A :class:`RunRequest` from URL query parameters, plus notices about
    anything that was clamped, truncated or ignored. Never raises.

    ``params`` may map to strings or lists of strings (``parse_qs`` style; the
    last value wins). Keys: prompt, model, release, sae_id, seed, temperature,
    top_k, top_p, repetition_penalty, max_tokens, feature_k, threshold,
    stop_at_eos, autorun, steer (``123:4.5,88:-2``), at (a token position to show
    the graph at), embed (``1``: the embed view), layers (``2,5,8,11``: the blocks
    whose SAEs one run reads at once). Unknown keys and empty
    values are ignored silently, except that an empty prompt/model/release/
    sae_id/steer/layers clears the default. ``limits`` defaults to :meth:`Limits.from_env`;
    ``defaults`` to :data:`DEFAULT_REQUEST` (its settings are clamped to
    ``limits`` silently).
    """
    notices: list[str] = []
    try:
        return _parse(params, limits, defaults, notices)
    except Exception:  # pragma: no cover - defensive; _parse is meant not to raise
        safe = replace(DEFAULT_REQUEST, settings=Limits().clamp_settings(GenerationSettings()))
        return safe, notices[:20] + ["link could not be read; using defaults"]


def _parse(params: Any, limits: Limits | None, defaults: RunRequest | None,
           notices: list[str]) -> tuple[RunRequest, list[str]]:
    limits = Limits.from_env() if limits is None else limits
    defaults = DEFAULT_REQUEST if defaults is None else defaults
    if params is None or not hasattr(params, "get"):
        params = {}

    settings = limits.clamp_settings(defaults.settings)
    prompt = _clean_prompt(defaults.prompt, limits, None)
    names: dict[str, str | None] = {
        "model": defaults.model, "release": defaults.release, "sae_id": defaults.sae_id,
    }
    autorun = bool(defaults.autorun)
    steer = tuple(defaults.steer)

    raw = _value(params, "prompt", notices)
    if raw is not None:
        prompt = _clean_prompt(raw, limits, notices)

    for key in names:
        raw = _value(params, key, notices)
        if raw is not None:
            names[key] = _clean_name(raw, key, limits, notices)

    changes: dict[str, Any] = {}
    for key, field_name in _NUMBER_KEYS.items():
        raw = _value(params, key, notices)
        if raw is None or not raw.strip():
            continue
        number = _parse_number(raw)
        current = getattr(settings, field_name)
        if number is None:
            notices.append(f"{key} '{_echo(raw)}' is not a number, kept {_fmt(current)}")
            continue
        value, clamped = _clamp(limits, field_name, number)
        if clamped:
            notices.append(f"{key} {_echo(raw)} clamped to {_fmt(value)}")
        elif field_name in _INT_FIELDS and isinstance(number, float) and number != value:
            notices.append(f"{key} {_echo(raw)} rounded to {_fmt(value)}")
        changes[field_name] = value

    raw = _value(params, "stop_at_eos", notices)
    if raw is not None and raw.strip():
        word = raw.strip().lower()
        if word in _TRUE:
            changes["stop_at_eos"] = True
        elif word in _FALSE:
            changes["stop_at_eos"] = False
        else:
            kept = "on" if settings.stop_at_eos else "off"
            notices.append(f"stop_at_eos '{_echo(raw)}' not understood, kept {kept}")

    raw = _value(params, "autorun", notices)
    if raw is not None and raw.strip():
        word = raw.strip().lower()
        autorun = word in _TRUE
        if not autorun and word not in _FALSE:
            notices.append(f"autorun '{_echo(raw)}' not understood, not running")

    raw = _value(params, "steer", notices)
    if raw is not None:
        steer = _parse_steer(raw, limits, notices) if raw.strip() else ()

    at = defaults.at
    raw = _value(params, "at", notices)
    if raw is not None and raw.strip():
        number = _parse_number(raw)
        if number is None or not math.isfinite(number):
            notices.append(f"at '{_echo(raw)}' is not a token position, showing the newest token")
        else:
            at = int(min(max(number, 0), MAX_POSITION))
            if at != number:
                notices.append(f"at {_echo(raw)} clamped to {at}")

    embed = bool(defaults.embed)
    raw = _value(params, "embed", notices)
    if raw is not None and raw.strip():
        embed = raw.strip().lower() in _TRUE

    layers = tuple(defaults.layers)
    raw = _value(params, "layers", notices)
    if raw is not None:
        layers = _parse_layers(raw, limits, notices) if raw.strip() else ()

    if changes:
        settings = replace(settings, **changes)
    req = RunRequest(
        prompt=prompt, model=names["model"], release=names["release"], sae_id=names["sae_id"],
        settings=settings, autorun=autorun, steer=steer, at=at, embed=embed, layers=layers,
    )
    return req, notices


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
    pairs.append(("seed", _fmt(s.seed)))
    for key, field_name in _NUMBER_KEYS.items():
        if key == "seed":
            continue
        value = getattr(s, field_name)
        if value != getattr(ds, field_name):
            pairs.append((key, _fmt(value)))
    if bool(s.stop_at_eos) != bool(ds.stop_at_eos):
        pairs.append(("stop_at_eos", "1" if s.stop_at_eos else "0"))
    if tuple(req.steer) != tuple(d.steer):
        pairs.append(("steer", ",".join(f"{int(i)}:{_fmt(c)}" for i, c in req.steer)))
    if bool(req.autorun) != bool(d.autorun):
        pairs.append(("autorun", "1" if req.autorun else "0"))
    if req.at is not None and req.at != d.at:
        pairs.append(("at", str(int(req.at))))
    if bool(req.embed) != bool(d.embed):
        pairs.append(("embed", "1" if req.embed else "0"))
    if tuple(req.layers) != tuple(d.layers):
        pairs.append(("layers", ",".join(str(int(i)) for i in req.layers)))
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
