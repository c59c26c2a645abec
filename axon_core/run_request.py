"""What a run asks for: :class:`RunRequest`, and the :class:`Limits` every request is held to.

A request comes from the page's inputs, an API call or a share link, always
through :func:`axon_core.query.parse_query`, which clamps each number with
:func:`clamp` into :class:`Limits`; :mod:`axon_core.share` writes one back as a link.

Worked example::

    limits = Limits.from_env({"AXON_MAX_NEW_TOKENS": "50"})
    limits.range_of("max_new_tokens")                  # (1, 50)
    clamp(limits, "temperature", 9)                    # (2.0, True): clamped
    clamp(limits, "top_k", 12.6)                       # (13, False)
    limits.clamp_settings(GenerationSettings(top_k=5000)).top_k   # 1000
    fmt_number(2.0), fmt_number(0.1)                   # ('2', '0.1')
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Any, Mapping

from .generation import GenerationSettings


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
    # features followed at every token (axon_core.watch): (layer | None, index), distinct, in order
    watch: tuple[tuple[int | None, int], ...] = ()
    # a what-if fork: (token position, token id): the run continues as if that token had been chosen there
    fork: tuple[int, int] | None = None


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
    max_watch: int = 16  # features a run follows (``watch``)
    fork_token: tuple[int, int] = (0, 2**31 - 1)  # a fork's token id (out of range: no fork)

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
        for name in INT_FIELDS + FLOAT_FIELDS:
            value = getattr(settings, name)
            fixed, _ = clamp(self, name, value)
            if fixed != value or type(fixed) is not type(value):
                changes[name] = fixed
        if not isinstance(settings.stop_at_eos, bool):
            changes["stop_at_eos"] = bool(settings.stop_at_eos)
        return replace(settings, **changes) if changes else settings


INT_FIELDS = ("max_new_tokens", "top_k", "seed", "feature_k")
FLOAT_FIELDS = ("temperature", "top_p", "repetition_penalty", "activation_threshold")

# query key -> GenerationSettings field
NUMBER_KEYS = {
    "seed": "seed",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "repetition_penalty": "repetition_penalty",
    "max_tokens": "max_new_tokens",
    "feature_k": "feature_k",
    "threshold": "activation_threshold",
}


def fmt_number(x: float | int) -> str:
    """Shortest exact text for a number (``2`` rather than ``2.0``)."""
    if isinstance(x, bool):
        return "1" if x else "0"
    if isinstance(x, int):
        return str(x)
    if math.isfinite(x) and x == int(x) and abs(x) < 2**53:
        return str(int(x))
    return repr(float(x))


def clamp(limits: "Limits", name: str, value: float | int) -> tuple[float | int, bool]:
    """``value`` converted to the field's type and clamped; (result, clamped?)."""
    lo, hi = limits.range_of(name)
    if name in INT_FIELDS:
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
