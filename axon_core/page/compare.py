"""A steered run beside the plain one: both texts, the first token where they part, what changed in the graph.

Worked example::

    html = comparison_html(plain, steered)      # two RunSessions of one prompt and seed
    # '<div class="axon-compare"><p><b>Steering</b> #3 +40.00 · first divergence at position 7
    #  (after 1 shared new tokens)</p> … stronger when steered: F3 Feature 3 (+38.2) …'
"""

from __future__ import annotations

import html

from ..features import key_name
from ..session import RunSession, token_span
from ..steering import compare_runs


def comparison_html(plain: RunSession, steered: RunSession) -> str:
    """Both texts side by side, the first diverging token marked, and what changed in the graph."""
    cmp = compare_runs(plain.steps, steered.steps)

    def text(run):
        return "".join(token_span(s, "diverge" if s.position == cmp.first_divergence else "")
                       for s in run.steps)

    def feats(rows):
        return ", ".join(f"{key_name(i)} {html.escape(plain.label(i))} ({d:+.1f})" for i, d in rows) or "none"

    where = ("identical texts" if cmp.first_divergence is None
             else f"first divergence at position {cmp.first_divergence} (after {cmp.shared_tokens} shared new tokens)")
    spec = ", ".join(f"#{f} {c:+.2f}" for f, c in steered.meta.get("steer", ()))
    return (f'<div class="axon-compare"><p><b>Steering</b> {html.escape(spec)} · {where}</p>'
            f'<div class="cols"><div><h4>plain</h4><div class="axon-text">{text(plain)}</div></div>'
            f'<div><h4>steered</h4><div class="axon-text">{text(steered)}</div></div></div>'
            f"<p>stronger when steered: {feats(cmp.gained)}<br>weaker: {feats(cmp.lost)}</p></div>")
