"""Two runs of one prompt side by side: a steered run beside the plain one, or a fork beside the run it forks.

Both texts, the first token where they part, the features that fired only in
one of them at that token, and which features' peaks changed most.

Worked example::

    html = comparison_html(plain, steered)      # two RunSessions of one prompt and seed
    # '<div class="axon-compare"><p><b>Steering</b> #3 +40.00 · first divergence at position 7
    #  (after 1 shared new tokens)</p> … stronger when steered: F3 Feature 3 (+38.2) …'
    fork_html(run, forked, position=7, token_id=6342)
    # '<div class="axon-fork-view"><p><b>Fork</b> at position 7: “ London” instead of “ Paris” · …'
"""

from __future__ import annotations

import html

from ..features import key_name
from ..session import RunSession, token_span
from ..steering import compare_runs


def _first_features(a: RunSession, b: RunSession, position: int | None) -> str:
    """The features that fired at ``position`` in only one of the runs (strongest first)."""
    if position is None:
        return ""
    sa = next((s for s in a.steps if s.position == position), None)
    sb = next((s for s in b.steps if s.position == position), None)
    if sa is None or sb is None:
        return ""
    ka, kb = {f.key for f in sa.features}, {f.key for f in sb.features}

    def names(step, only):
        return ", ".join(f"{key_name(f.key)} {html.escape(a.label(f.key))} ({f.activation:.1f})"
                         for f in step.features if f.key in only)[:600] or "none"

    return (f"<p>features at position {position}, where they part: only in the first: {names(sa, ka - kb)}"
            f"<br>only in the second: {names(sb, kb - ka)}</p>")


def comparison_html(plain: RunSession, steered: RunSession, title: str | None = None,
                    names: tuple[str, str] = ("plain", "steered"), cls: str = "axon-compare") -> str:
    """Both texts side by side, the first diverging token marked, the features that
    fired there in only one of them, and what changed in the graph. ``title``
    (escaped HTML) replaces the steering spec's head; ``names`` the columns' titles."""
    cmp = compare_runs(plain.steps, steered.steps)

    def text(run):
        return "".join(token_span(s, "diverge" if s.position == cmp.first_divergence else "",
                                  f' data-pos="{s.position}"') for s in run.steps)

    def feats(rows):
        return ", ".join(f"{key_name(i)} {html.escape(plain.label(i))} ({d:+.1f})" for i, d in rows) or "none"

    where = ("identical texts" if cmp.first_divergence is None
             else f"first divergence at position {cmp.first_divergence} (after {cmp.shared_tokens} shared new tokens)")
    if title is None:
        spec = ", ".join(f"#{f} {c:+.2f}" for f, c in steered.meta.get("steer", ()))
        title = f"<b>Steering</b> {html.escape(spec)}"
    first = _first_features(plain, steered, cmp.first_divergence).replace("the first", html.escape(names[0]))
    first = first.replace("the second", html.escape(names[1]))
    return (f'<div class="{cls}"><p>{title} · {where}</p>'
            f'<div class="cols"><div><h4>{html.escape(names[0])}</h4><div class="axon-text">{text(plain)}</div></div>'
            f'<div><h4>{html.escape(names[1])}</h4><div class="axon-text">{text(steered)}</div></div></div>'
            f"{first}<p>stronger in {html.escape(names[1])}: {feats(cmp.gained)}<br>weaker: {feats(cmp.lost)}</p>"
            "</div>")


def fork_html(run: RunSession, forked: RunSession, position: int, token_id: int, note: str = "") -> str:
    """A fork beside the run it forks: ``token_id`` forced at ``position``."""
    was = next((s.shown for s in run.steps if s.position == position), "")
    now = next((s.shown for s in forked.steps if s.position == position), f"#{token_id}")

    def q(t):
        return html.escape(f"“{t}”").replace("\n", "↵")

    title = (f"<b>Fork</b> at position {position}: {q(now)} instead of {q(was)}, then the model writes on "
             f"(same settings; sampling after the fork seeded by the run's seed and the fork)"
             + (f" · {html.escape(note)}" if note else ""))
    return comparison_html(run, forked, title, ("as run", "forked"), cls="axon-compare-fork")
