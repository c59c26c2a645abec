"""The watch list under the text: one sparkline per watched feature, token-aligned, the shown token marked.

Plain HTML + inline SVG (no script): x is the token's place in the run (the
prompt's first token at the left; the axis spans the tokens the run may reach,
so a line grows left to right while the run streams), y the feature's exact
activation (0 at the bottom, the feature's peak in the run at the top). The
token shown (the scrubbed one, or the newest) is marked by a vertical rule and
a dot, and its value is written beside the name. Labels are escaped.

Worked example::

    html = sparklines_html(steps, keys=(7124, 88), names=["France", "#88"], at=6, span=45)
    # '<div class="axon-watch" data-tokens="12">'
    # '<div class="axon-spark" data-key="7124" data-tokens="12" data-at="5"> …<svg …><polyline …/>…'
"""

from __future__ import annotations

import html
from typing import Sequence

from .features import split_key

WIDTH, HEIGHT = 300, 28  # the SVG's own units (it is stretched to the panel's width)


def key_text(key: int) -> str:
    """How a watched key is written in a link and in ``data-key``: ``7124`` or ``8:7124``."""
    layer, index = split_key(key)
    return str(index) if layer is None else f"{layer}:{index}"


def sparklines_html(steps: Sequence, keys: Sequence[int], names: Sequence[str], at: int | None = None,
                    span: int | None = None) -> str:
    """The panel for ``steps`` (TokenSteps whose ``watched`` follow ``keys``, graph node
    keys), ``names`` (each key's label), ``at`` (the token position shown; None: the
    newest) and ``span`` (how many tokens the axis spans; at least the steps shown)."""
    if not keys:
        return ""
    n = len(steps)
    span = max(n, int(span or 0), 2)
    shown = n - 1 if at is None else next((i for i, s in enumerate(steps) if s.position == at), n - 1)
    rows = []
    for j, (key, name) in enumerate(zip(keys, names)):
        values = [float(s.watched[j]) if j < len(s.watched) else 0.0 for s in steps]
        rows.append(_row(key_text(key), name, values, shown, span))
    return (f'<div class="axon-watch" data-tokens="{n}"><div class="axon-watch-head">Watched features '
            f'(exact activation at every token, fired or not)</div>{"".join(rows)}</div>')


def _row(key: str, name: str, values: list[float], shown: int, span: int) -> str:
    n = len(values)
    peak = max(values, default=0.0)
    top = peak if peak > 0 else 1.0
    dx = WIDTH / (span - 1)
    pts = " ".join(f"{i * dx:.1f},{HEIGHT - 1 - (HEIGHT - 2) * max(v, 0.0) / top:.1f}" for i, v in enumerate(values))
    mark = ""
    now = ""
    if 0 <= shown < n:
        x, v = shown * dx, values[shown]
        y = HEIGHT - 1 - (HEIGHT - 2) * max(v, 0.0) / top
        mark = (f'<line class="axon-spark-at" x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{HEIGHT}"/>'
                f'<circle class="axon-spark-dot" cx="{x:.1f}" cy="{y:.1f}" r="2.2"/>')
        now = f"{v:.2f}"
    fired = sum(v > 0 for v in values)
    title = html.escape(f"{key} · {name}: {now or '–'} at the shown token; peak {peak:.2f}; "
                        f"active at {fired} of {n} tokens", quote=True)
    line = f'<polyline class="axon-spark-line" points="{pts}"/>' if n > 1 else ""
    return (f'<div class="axon-spark" data-key="{html.escape(key, quote=True)}" data-tokens="{n}" '
            f'data-at="{shown}" title="{title}"><span class="axon-spark-name">{html.escape(name)}</span>'
            f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" preserveAspectRatio="none" width="100%" height="{HEIGHT}">'
            f'{line}{mark}</svg><span class="axon-spark-now">{html.escape(now)}</span></div>')
