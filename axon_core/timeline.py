"""The run as a token × feature heatmap (a Plotly dict, like figure.py).

Tokens run along x (in order, labelled by their text), the run's strongest
features along y (by peak activation; ``L5 #123`` in a run of several layers), colour is the activation of that
feature on that token (0 where it did not fire). Every cell carries the token's
position as ``customdata`` so a click can highlight that token's features.

Worked example::

    fig = timeline_figure(steps, label_of, n_features=30)
    fig["data"][0]["z"][0][:5]       # activations of the strongest feature on the first 5 tokens
    fig["data"][0]["customdata"][0]  # token positions, for clicks
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .features import key_name
from .figure import BACKGROUND, COLORSCALE, hover_label
from .generation import TokenStep
from .strip import fit_text


def strongest_features(steps: Sequence[TokenStep], n: int) -> list[int]:
    peaks: dict[int, float] = {}
    for s in steps:
        for f in s.features:
            peaks[f.key] = max(peaks.get(f.key, 0.0), f.activation)
    return sorted(peaks, key=lambda i: (-peaks[i], i))[:n]


def timeline_figure(steps: Sequence[TokenStep], label_of: Callable[[int], str], n_features: int = 30,
                    highlight_position: int | None = None) -> dict:
    """Heatmap of the ``n_features`` strongest features over the run's tokens."""
    features = strongest_features(steps, n_features)
    row = {f: r for r, f in enumerate(features)}
    z = [[0.0] * len(steps) for _ in features]
    for c, s in enumerate(steps):
        for f in s.features:
            if f.key in row:
                z[row[f.key]][c] = round(f.activation, 3)
    ticks = [hover_label(repr(s.text)[:14]) for s in steps]  # token text is untrusted too
    names = [f"{key_name(f)} {hover_label(label_of(f)[:28])}" for f in features]  # cut, then escape
    fits = [f"<br>{hover_label(fit_text(s.fit))}" if s.fit else "" for s in steps]  # the SAE's fit at each token
    text = [[f"{names[r]}<br>token {hover_label(steps[c].text)!s} (pos {steps[c].position})"
             f"<br>activation {z[r][c]:.2f}{fits[c]}" for c in range(len(steps))] for r in range(len(features))]
    heat = {
        "type": "heatmap", "z": z, "x": list(range(len(steps))), "y": list(range(len(features))),
        "customdata": [[s.position for s in steps] for _ in features],
        "text": text, "hoverinfo": "text", "colorscale": COLORSCALE, "zmin": 0.0,
        "showscale": False, "xgap": 1, "ygap": 1,
    }
    shapes = []
    if highlight_position is not None:
        cols = [c for c, s in enumerate(steps) if s.position == highlight_position]
        if cols:
            shapes.append({"type": "rect", "xref": "x", "yref": "paper", "x0": cols[0] - 0.5,
                           "x1": cols[0] + 0.5, "y0": 0, "y1": 1, "line": {"color": "#7df9ff", "width": 2}})
    layout = {
        "paper_bgcolor": BACKGROUND, "plot_bgcolor": BACKGROUND, "font": {"color": "#d8dcf0", "size": 10},
        "margin": {"l": 220, "r": 10, "t": 10, "b": 70}, "height": max(220, 14 * len(features) + 90),
        "xaxis": {"tickmode": "array", "tickvals": list(range(len(steps))), "ticktext": ticks,
                  "tickangle": -60, "showgrid": False},
        "yaxis": {"tickmode": "array", "tickvals": list(range(len(features))), "ticktext": names,
                  "autorange": "reversed", "showgrid": False},
        "shapes": shapes, "uirevision": "axon-timeline",
    }
    return {"data": [heat], "layout": layout}
