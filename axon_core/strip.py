"""The decision strip: why the shown token was chosen, as HTML beside the text.

For the newest token (or the scrubbed one) at position q, the strip shows the
decision made at q − 1 that chose it (:class:`~axon_core.decision.Decision`
on the step before): the candidates with their probabilities at temperature 1
and under the sampling distribution used, the chosen one marked; for the
runner-up (and, on a click, any other candidate) the features at q − 1 that
pushed the choice for and against it, by the *direct path* (said so in the
strip); beside each candidate not chosen a “fork” button that forks the run at q
with that token (“fork”; a click on the candidate itself only compares: it is cheap
and reversible, a fork computes a new continuation; shift-click also forks,
see assets/text.js and :mod:`axon_core.page.fork`); and how much of the residual there the SAE explains (a badge,
flagged when low). Each candidate's block carries every feature's push against
it (``data-push``, graph node keys → push) for a graph to colour its nodes by. Everything shown is escaped: token texts and labels are
untrusted.

Worked example::

    html = strip_html(steps, position=7, label=run.label)
    # '<div class="axon-decision" data-pos="7">…Why “ Paris”?…</div>'
    hover_text(steps[6], steps[5])   # "chosen among ' Paris' 41%, ' the' 10%, …"
"""

from __future__ import annotations

import html
import json
from typing import Callable, Sequence

from .decision import DIRECT, GRADIENT, Decision, Fit
from .features import key_name
from .generation import TokenStep
from .measured import MEASURED

N_PUSHERS = 4  # features listed for, and against, a choice
FORK_TITLE = "fork the run here: the model writes on as if {} had been chosen (both texts shown side by side)"


def pct(p: float | None) -> str:
    """A probability for people: ``41%``, ``0.3%``, ``<0.1%``."""
    if p is None:
        return "–"
    if p >= 0.0995:
        return f"{100 * p:.0f}%"
    if p >= 0.001:
        return f"{100 * p:.1f}%"
    return "<0.1%" if p > 0 else "0%"


def share(fve: float) -> str:
    """Variance explained for people: ``81%``; ``<−100%`` for a reconstruction worse than that."""
    return f"{100 * fve:.0f}%" if fve >= -1 else "<−100%"


def fit_text(fits: Sequence[Fit]) -> str:
    """``SAE explains 81% (L0 54)``; per layer in a run of several SAEs."""
    if not fits:
        return ""
    if len(fits) == 1:
        f = fits[0]
        return f"SAE explains {share(f.fve)} (L0 {f.l0})"
    return "SAE explains " + ", ".join(f"L{f.layer} {share(f.fve)}" for f in fits)


def _fit_badge(fits: Sequence[Fit], where: str) -> str:
    if not fits:
        return ""
    low = any(f.low for f in fits)
    title = ("fraction of the residual's variance the SAE reconstructs, 1 − ‖x − x̂‖² / ‖x − mean(x)‖², "
             f"and L0 (features active), at {where}")
    note = " · low: its features tell less here" if low else ""
    return (f'<span class="dec-fit{" low" if low else ""}" title="{html.escape(title, quote=True)}">'
            f"{html.escape(fit_text(fits) + note)}</span>")


def _q(text: str) -> str:
    return html.escape(f"“{text}”").replace("\n", "↵")


def _pushers(decision: Decision | None, step: TokenStep, other: int, label: Callable[[int], str],
             pushes: list[tuple[int, float]] | None = None) -> str:
    if pushes is None:
        pushes = [(k, v) for k, v in decision.pushes([f.key for f in step.features], other) if v is not None]
    if not pushes:
        return '<span class="dec-none">no features with a direct path here</span>'
    ranked = sorted(pushes, key=lambda kv: -kv[1])
    pro = [kv for kv in ranked if kv[1] > 0][:N_PUSHERS]
    con = [kv for kv in reversed(ranked) if kv[1] < 0][:N_PUSHERS]

    def items(rows):
        if not rows:
            return '<span class="dec-none">none</span>'
        return "".join(f'<span class="dec-feat" data-key="{k}">{html.escape(key_name(k))} '
                       f'{html.escape(label(k)[:40])} <b>{v:+.2f}</b></span>' for k, v in rows)

    return (f'<div class="dec-for"><i>for</i> {items(pro)}</div>'
            f'<div class="dec-against"><i>against</i> {items(con)}</div>')


def _gradient(g: dict | None, shown: TokenStep, before: TokenStep, other: str,
              label: Callable[[int], str]) -> str:
    """The gradient flavour's block against one candidate (``other``: its text), when it was
    computed (see :func:`strip_html`)."""
    if not g:
        return ""
    if g.get("error"):
        return f'<div class="dec-grad">{html.escape(g["error"])}</div>'
    return (f'<div class="dec-grad"><div class="dec-vs">flavour: {html.escape(GRADIENT)}; {_q(shown.shown)} rather '
            f'than {_q(other)}, by feature at {_q(before.shown)} ({g["ms"]:.0f} ms):</div>'
            f'{_pushers(None, before, g["other"], label, g["pushes"])}</div>')


def _measured(m: dict | None, shown: TokenStep, before: TokenStep, other: str,
              label: Callable[[int], str]) -> str:
    """The measured flavour's block against one candidate, when it was computed (see :func:`strip_html`)."""
    if not m:
        return ""
    if m.get("error"):
        return f'<div class="dec-measured">{html.escape(m["error"])}</div>'
    rows = "".join(f'<span class="dec-feat" data-key="{k}">{html.escape(key_name(k))} {html.escape(label(k)[:40])} '
                   f'<b>{dd:+.2f}</b> <small>p {100 * dp:+.1f} pt</small></span>' for k, dd, dp in m["rows"])
    return (f'<div class="dec-measured"><div class="dec-vs">flavour: {html.escape(MEASURED)}; {_q(shown.shown)} '
            f'rather than {_q(other)} at {_q(before.shown)}, as run: logit difference {m["logit_diff"]:+.2f}, '
            f'p {pct(m["prob"])} ({m["ms"]:.0f} ms). Removing each feature changes them by:</div>'
            f'{rows or "<span class=dec-none>no features to ablate</span>"}</div>')


def _push_data(decision: Decision, step: TokenStep, other: int) -> str:
    """Every feature's direct-path push on ``logit(chosen) − logit(other)`` at the deciding
    step, as an escaped JSON attribute ``{"<graph node key>": push}`` (4 decimals): what a
    graph would colour its nodes by (for: > 0, against: < 0) while this candidate is compared."""
    rows = {str(k): round(float(v), 4) for k, v in decision.pushes([f.key for f in step.features], other)
            if v is not None}
    return html.escape(json.dumps(rows, separators=(",", ":")), quote=True)


def strip_html(steps: Sequence[TokenStep], position: int | None, label: Callable[[int], str],
               gradients: dict[int, dict] | None = None, measured: dict[int, dict] | None = None) -> str:
    """The strip for the token at ``position`` (None: the newest), or "" before a run.
    ``gradients``: ``{deciding position: {other candidate's token id: {"other", "pushes",
    "ms"}}}`` (or ``{"error"}``), the gradient flavour where it was asked for;
    ``measured``: ``{deciding position: {other: {"other", "logit_diff", "prob", "rows":
    [(key, Δ logit diff, Δ p)], "ms"}}}``, the measured one. Each shows in the block of
    the candidate it was computed against (the runner-up's, or the one clicked: see
    assets/notes.js), under the direct path's pushers."""
    if not steps:
        return ""
    at = len(steps) - 1 if position is None else next((i for i, s in enumerate(steps) if s.position == position),
                                                      len(steps) - 1)
    shown, before = steps[at], steps[at - 1] if at > 0 else None
    decision = before.decision if before is not None else None
    head = f'<div class="axon-decision" data-pos="{shown.position}">'
    if decision is None or decision.chosen != shown.token_id:
        why = "a prompt token: given, not chosen" if shown.is_prompt else "no decision recorded for this token"
        return f'{head}<div class="dec-head"><b>{_q(shown.shown)}</b> · {why}</div></div>'
    runner = decision.runner_up
    cands = []
    for j, c in enumerate(decision.candidates):
        cls = "axon-cand" + (" chosen" if c.chosen else "") + (" vs" if runner and c.token_id == runner.token_id
                                                               else "")
        title = f"T=1: {pct(c.prob)} · sampled: {pct(c.sampled_prob)}" + (" · chosen" if c.chosen else "")
        fork = ("" if c.chosen else
                f'<button type="button" class="axon-fork" data-pos="{shown.position}" data-tok="{c.token_id}" '
                f'title="{html.escape(FORK_TITLE.format(_q(c.text)), quote=True)}">fork</button>')
        cands.append(f'<span class="dec-cand"><button type="button" class="{cls}" data-j="{j}" data-tok="{c.token_id}" '
                     f'title="{html.escape(title, quote=True)}">'
                     f'{_q(c.text)} <b>{html.escape(pct(c.prob))}</b> <small>{html.escape(pct(c.sampled_prob))}</small>'
                     f'</button>{fork}</span>')
    pushes = []
    grads, meas = (gradients or {}).get(before.position) or {}, (measured or {}).get(before.position) or {}
    for j, c in enumerate(decision.candidates):
        if c.chosen:
            continue
        off = "" if runner and c.token_id == runner.token_id else " off"
        pushes.append(f'<div class="dec-push{off}" data-j="{j}" data-push="{_push_data(decision, before, c.token_id)}">'
                      f'<div class="dec-vs">what made it {_q(shown.shown)} '
                      f'rather than {_q(c.text)} (logit difference, by feature at {_q(before.shown)}; '
                      f'{html.escape(DIRECT.split(" (")[0])}):</div>'
                      f"{_pushers(decision, before, c.token_id, label)}"
                      f"{_gradient(grads.get(c.token_id), shown, before, c.text, label)}"
                      f"{_measured(meas.get(c.token_id), shown, before, c.text, label)}</div>")
    return (f'{head}<div class="dec-head"><b>Why {_q(shown.shown)}?</b> {_fit_badge(before.fit, before.shown)}'
            f'</div><div class="dec-cands">{"".join(cands)}</div>'
            f'<div class="dec-legend">bold: probability at temperature 1 · small: under the sampling used '
            f'· click a candidate: what pushed the choice against it · “fork” beside it (or shift-click): fork the '
            f'run here, as if it had been chosen</div>{"".join(pushes)}'
            f'<button type="button" class="axon-tint" title="colour the graph\'s nodes by their direct-path push on the '
            f'choice against the candidate compared">colour the graph by push (for / against)</button>'
            f'<div class="dec-flavour">flavour of the pushers listed first: {html.escape(DIRECT)}; the other '
            f'flavours (buttons below) are computed against the candidate compared, the runner-up unless '
            f'another is clicked</div></div>')


def hover_text(step: TokenStep, before: TokenStep | None) -> str:
    """What a token's hover adds: the candidates it was chosen among, and the SAE's fit at it."""
    parts = []
    d = before.decision if before is not None else None
    if d is not None and d.chosen == step.token_id:
        parts.append("chosen among " + ", ".join(f"{c.text!r} {pct(c.prob)}" for c in d.candidates[:5]))
    if step.fit:
        parts.append(fit_text(step.fit) + (" (low)" if any(f.low for f in step.fit) else ""))
    return " · ".join(parts)
