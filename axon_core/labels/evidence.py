"""A feature's evidence from Neuronpedia: top-activating examples, logit lens, density, typical maximum.

Two parts, each stored on its own (they come from different bulk folders):
``lens`` (Neuronpedia's logit lens ``pos_str``/``pos_values`` and
``neg_str``/``neg_values``, density ``frac_nonzero``, ``maxActApprox``; the
export's ``features/`` folder) and ``examples`` (top-activating ``activations``:
``tokens``, ``values``, ``maxValue``, ``maxValueTokenIndex``; the export's
``activations/`` folder, one row per example). The feature endpoint
(``GET /api/feature/...``) has both. Everything is third-party data: token
strings are kept *raw* (cut to ``MAX_TOKEN`` characters) and escaped by the
renderer; numbers that are not finite are dropped; Neuronpedia's "N/A"
(−10000) is no value; a density ≤ 0 is unknown.

Worked example::

    ev = from_feature({"activations": [{"tokens": [" Paris", " is"], "values": [5.1, 0.0],
                                        "maxValue": 5.1, "maxValueTokenIndex": 0}],
                       "pos_str": [" France"], "pos_values": [0.9], "frac_nonzero": 0.0012,
                       "maxActApprox": 5.3})
    ev.examples[0].max_index   # 0
    ev.pos                     # ((' France', 0.9),)
    ev.density, ev.max_act     # (0.0012, 5.3)
    Evidence.from_parts(ev.parts())   # the same evidence back from what the store keeps
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

MAX_EXAMPLES = 8  # top examples kept per feature
BEFORE, AFTER = 32, 16  # tokens kept before and after an example's max token
MAX_TOKEN = 40  # characters of a token string
MAX_LENS = 10  # logit-lens tokens kept per side
NA = -10000.0  # Neuronpedia's "N/A" in logit-lens values


@dataclass(frozen=True)
class Example:
    """One top-activating example, cut to a window around its max token."""

    tokens: tuple[str, ...]
    values: tuple[float, ...]
    max_value: float
    max_index: int  # into ``tokens``


@dataclass(frozen=True)
class Evidence:
    """What is known locally about one feature; a part that is None has not arrived yet."""

    examples: tuple[Example, ...] | None = None
    pos: tuple[tuple[str, float], ...] | None = None
    neg: tuple[tuple[str, float], ...] = ()
    density: float | None = None  # fraction of tokens it fires on (None: unknown)
    max_act: float | None = None  # Neuronpedia's maxActApprox (None: unknown)
    missing: tuple[str, ...] = field(default=("lens", "examples"))  # parts not known yet

    def parts(self) -> dict[str, str]:
        """The known parts as the store keeps them: part name → JSON."""
        out = {}
        if "lens" not in self.missing:
            out["lens"] = json.dumps({"pos": self.pos or [], "neg": self.neg, "density": self.density,
                                      "max_act": self.max_act})
        if "examples" not in self.missing:
            out["examples"] = json.dumps([[e.tokens, e.values, e.max_value, e.max_index]
                                          for e in self.examples or ()])
        return out

    @classmethod
    def from_parts(cls, parts: dict[str, str]) -> "Evidence":
        """The evidence from stored parts (see :meth:`parts`); a part that does not parse is missing."""
        kw: dict = {}
        missing = []
        try:
            lens = json.loads(parts["lens"])
            kw.update(pos=_pairs(lens["pos"]), neg=_pairs(lens["neg"]), density=_density(lens["density"]),
                      max_act=_positive(lens["max_act"]))
        except (KeyError, TypeError, ValueError):
            missing.append("lens")
        try:
            kw["examples"] = tuple(e for e in (_example(*row) for row in json.loads(parts["examples"])) if e)
        except (KeyError, TypeError, ValueError):
            missing.append("examples")
        return cls(**kw, missing=tuple(missing))


def _number(v) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _positive(v) -> float | None:
    x = _number(v)
    return x if x is not None and x > 0 else None


def _density(v) -> float | None:
    x = _number(v)
    return x if x is not None and 0 < x <= 1 else None


def _token(s) -> str:
    return str(s)[:MAX_TOKEN]


def _pairs(rows) -> tuple[tuple[str, float], ...]:
    out = []
    for s, v in rows:
        x = _number(v)
        if x is not None and x != NA:
            out.append((_token(s), x))
    return tuple(out[:MAX_LENS])


def _lens_side(strs, values) -> tuple[tuple[str, float], ...]:
    if not isinstance(strs, list) or not isinstance(values, list):
        return ()
    return _pairs(zip(strs, values))


def _example(tokens, values, max_value=None, max_index=None) -> Example | None:
    """An example cut to BEFORE/AFTER tokens around its max; None where it is malformed."""
    if not isinstance(tokens, (list, tuple)) or not isinstance(values, (list, tuple)) or not tokens:
        return None
    vals = [_number(v) or 0.0 for v in values[: len(tokens)]]
    vals += [0.0] * (len(tokens) - len(vals))
    try:
        m = int(max_index) if max_index is not None else None
    except (TypeError, ValueError):
        m = None
    if m is None or not 0 <= m < len(tokens):
        m = max(range(len(vals)), key=vals.__getitem__)
    top = _number(max_value)
    top = top if top is not None else vals[m]
    lo, hi = max(0, m - BEFORE), min(len(tokens), m + AFTER + 1)
    return Example(tuple(_token(t) for t in tokens[lo:hi]), tuple(vals[lo:hi]), top, m - lo)


def examples_of(rows) -> tuple[Example, ...]:
    """The top MAX_EXAMPLES examples (strongest first) of activation rows (dicts)."""
    out = []
    for r in rows if isinstance(rows, list) else ():
        if isinstance(r, dict):
            e = _example(r.get("tokens"), r.get("values"), r.get("maxValue"), r.get("maxValueTokenIndex"))
            if e is not None:
                out.append(e)
    out.sort(key=lambda e: -e.max_value)
    return tuple(out[:MAX_EXAMPLES])


def lens_of(row: dict) -> dict:
    """The ``lens`` part's fields of a feature row (the endpoint's answer or a ``features/`` record)."""
    return {"pos": _lens_side(row.get("pos_str"), row.get("pos_values")),
            "neg": _lens_side(row.get("neg_str"), row.get("neg_values")),
            "density": _density(row.get("frac_nonzero")), "max_act": _positive(row.get("maxActApprox"))}


def from_feature(row: dict) -> Evidence:
    """Both parts from the feature endpoint's answer."""
    if not isinstance(row, dict):
        raise ValueError("a feature answer must be a JSON object")
    return Evidence(examples=examples_of(row.get("activations")), missing=(), **lens_of(row))


def record_index(row) -> int | None:
    """A bulk record's own ``index`` (string or int), None where it has none."""
    try:
        i = int(row["index"])
    except (KeyError, TypeError, ValueError):
        return None
    return i if i >= 0 else None
