"""A URL query (or any mapping a browser or an API call can send) → a :class:`RunRequest`, never raising.

Out-of-range numbers are clamped, unreadable values are ignored (the default
is kept) and each correction is reported as a short plain-text notice. Notices
echo at most ~40 characters of the user's value, with control characters
removed; they are *plain text*, so escape them before rendering as HTML.
``model``, ``release`` and ``sae_id`` are only cleaned here (control
characters removed, whitespace stripped, length limited; empty means "not
given", i.e. ``None``); whether they name something in the catalogue is for
the caller to check.

Worked example::

    req, notices = parse_query({"prompt": "Hi", "temperature": "9", "top_k": "nan"}, Limits())
    req.settings.temperature, req.settings.top_k   # (2.0, 50)
    notices  # ['temperature 9 clamped to 2', "top_k 'nan' is not a number, kept 50"]
    parse_query({"steer": "12:4.5, 88:-3", "layers": "8,2,2"}, Limits())[0].steer   # ((12, 4.5), (88, -3.0))
    parse_query({"watch": "7124, 8:88"}, Limits())[0].watch         # ((None, 7124), (8, 88))
    parse_query({"fork": "7:6342"}, Limits())[0].fork      # (7, 6342): token 6342 forced at position 7
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import replace
from typing import Any, Mapping

from .generation import GenerationSettings
from .run_request import DEFAULT_REQUEST, INT_FIELDS, MAX_POSITION, NUMBER_KEYS, Limits, RunRequest, clamp, fmt_number

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_MAX_NUMBER_CHARS = 100
_ECHO_CHARS = 40

# C0/C1 controls except \t and \n, plus lone surrogates (not encodable as UTF-8).
_PROMPT_BAD = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_INT_RE = re.compile(r"[+-]?[0-9]+", re.ASCII)
_LAYER_RE = re.compile(r"\s*([0-9]{1,12})\s*", re.ASCII)
_FORK_RE = re.compile(r"\s*([0-9]{1,12})\s*:\s*([0-9]{1,12})\s*", re.ASCII)
_STEER_RE = re.compile(r"\s*([0-9]{1,12})\s*:\s*(\S{1,64})\s*", re.ASCII)
_WATCH_RE = re.compile(r"\s*(?:([0-9]{1,12})\s*:\s*)?([0-9]{1,12})\s*", re.ASCII)


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
        notices.append(f"steer: coefficient {clamped[0]}{more} clamped to [{fmt_number(lo_c)}, {fmt_number(hi_c)}]")
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


def _parse_watch(raw: str, limits: Limits, notices: list[str]) -> tuple[tuple[int | None, int], ...]:
    """``"7124, 8:88"`` → ((None, 7124), (8, 88)): features (of the run's SAE, or of the
    SAE at a layer), distinct, in order, at most ``max_watch``."""
    found: list[tuple[int | None, int]] = []
    bad: list[str] = []
    dropped = 0
    lo_i, hi_i = limits.steer_index
    lo_l, hi_l = limits.layer
    for part in raw.split(","):
        if not part.strip():
            continue
        m = _WATCH_RE.fullmatch(part)
        layer = int(m.group(1)) if m and m.group(1) is not None else None
        index = int(m.group(2)) if m else -1
        if not lo_i <= index <= hi_i or (layer is not None and not lo_l <= layer <= hi_l):
            bad.append(part)
        elif (layer, index) not in found:
            if len(found) >= limits.max_watch:
                dropped += 1
                continue
            found.append((layer, index))
    if bad:
        more = f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""
        notices.append(f"watch: skipped '{_echo(bad[0])}'{more}")
    if dropped:
        notices.append(f"watch: kept the first {limits.max_watch} features, dropped {dropped}")
    return tuple(found)
def _parse_fork(raw: str, limits: Limits, notices: list[str]) -> tuple[int, int] | None:
    """``"7:6342"`` → (7, 6342): a token position and the token forced there; else None with a notice."""
    m = _FORK_RE.fullmatch(raw)
    lo, hi = limits.fork_token
    if m is None or int(m.group(1)) > MAX_POSITION or not lo <= int(m.group(2)) <= hi:
        notices.append(f"fork '{_echo(raw)}' is not position:token_id, not forking")
        return None
    return int(m.group(1)), int(m.group(2))


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
    whose SAEs one run reads at once), watch (``7124,8:88``: features followed
    at every token), fork (``7:6342``: continue as if token 6342
    had been chosen at position 7). Unknown keys and empty
    values are ignored silently, except that an empty prompt/model/release/
    sae_id/steer/layers/watch clears the default. ``limits`` defaults to :meth:`Limits.from_env`;
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
    for key, field_name in NUMBER_KEYS.items():
        raw = _value(params, key, notices)
        if raw is None or not raw.strip():
            continue
        number = _parse_number(raw)
        current = getattr(settings, field_name)
        if number is None:
            notices.append(f"{key} '{_echo(raw)}' is not a number, kept {fmt_number(current)}")
            continue
        value, clamped = clamp(limits, field_name, number)
        if clamped:
            notices.append(f"{key} {_echo(raw)} clamped to {fmt_number(value)}")
        elif field_name in INT_FIELDS and isinstance(number, float) and number != value:
            notices.append(f"{key} {_echo(raw)} rounded to {fmt_number(value)}")
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

    watch = tuple(defaults.watch)
    raw = _value(params, "watch", notices)
    if raw is not None:
        watch = _parse_watch(raw, limits, notices) if raw.strip() else ()
    fork = defaults.fork
    raw = _value(params, "fork", notices)
    if raw is not None:
        fork = _parse_fork(raw, limits, notices) if raw.strip() else None

    if changes:
        settings = replace(settings, **changes)
    req = RunRequest(
        prompt=prompt, model=names["model"], release=names["release"], sae_id=names["sae_id"],
        settings=settings, autorun=autorun, steer=steer, at=at, embed=embed, layers=layers, watch=watch,
        fork=fork,
    )
    return req, notices
