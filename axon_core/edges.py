"""Which edges mean something: co-firing scored against chance, or decoder geometry.

Two features "co-fire" when both are active on the same token. Two frequent
features co-fire often by chance alone, so a raw count says little. We score
each pair by **normalised pointwise mutual information** over the run's tokens:

    NPMI(a, b) = log(p_ab / (p_a · p_b)) / −log(p_ab)

with p_a, p_b the fractions of tokens each fires on and p_ab the fraction they
share: 0 means "as often as chance predicts", 1 "always together", −1 "never
together". Pairs seen together on fewer than ``min_support`` tokens are too
thin to judge and count as chance.

The second kind, **decoder cosine**, is the cosine similarity of the two
features' decoder directions (rows of ``W_dec``): how alike the SAE writes them
into the residual stream, a property of the SAE rather than of this text.

Worked example::

    npmi(count_ab=25, count_a=50, count_b=50, n=100)   # 0.0  (independent)
    npmi(30, 30, 30, 100)                              # 1.0  (always together)
    npmi(0, 30, 30, 100)                               # -1.0 (never together)
    scored = score_edges(graph, snapshot, kind="npmi")  # [(a, b, npmi, count), ...] above chance
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

EDGE_KINDS = ("npmi", "npmi_all", "cooccurrence", "decoder")


def npmi_array(count_ab: np.ndarray, count_a: np.ndarray, count_b: np.ndarray, n: int) -> np.ndarray:
    """NPMI of many pairs at once from counts over ``n`` tokens, each in [−1, 1]."""
    count_ab = np.asarray(count_ab, np.float64)
    out = np.full(count_ab.shape, -1.0)
    if n <= 0:
        return out
    p_ab = count_ab / n
    p_a, p_b = np.asarray(count_a, np.float64) / n, np.asarray(count_b, np.float64) / n
    some = (p_ab > 0) & (p_ab < 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.log(p_ab[some] / (p_a[some] * p_b[some])) / -np.log(p_ab[some])
    out[some] = np.clip(value, -1.0, 1.0)
    out[p_ab >= 1] = 1.0
    return out


def npmi(count_ab: int, count_a: int, count_b: int, n: int) -> float:
    """NPMI of two features from counts over ``n`` tokens, in [−1, 1]."""
    return float(npmi_array(np.array([count_ab]), np.array([count_a]), np.array([count_b]), n)[0])


@dataclass(frozen=True)
class ScoredEdge:
    source: int
    target: int
    score: float  # NPMI, co-fire weight, or decoder cosine, by kind
    count: int  # tokens the two co-fired on (0 for decoder edges that never co-fired)


def score_edge_columns(graph, snapshot, kind: str = "npmi", min_support: int = 2,
                       w_dec: torch.Tensor | None = None, max_edges: int = 1500,
                       min_cosine: float = 0.2) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`score_edges` as numpy columns (source, target, score, count), strongest first."""
    if kind not in EDGE_KINDS:
        raise ValueError(f"unknown edge kind {kind!r}; expected one of {EDGE_KINDS}")
    if kind == "decoder":
        rows = decoder_edges(w_dec, snapshot.ids.tolist(), graph, min_cosine, max_edges)
        return (np.array([e.source for e in rows], np.int64), np.array([e.target for e in rows], np.int64),
                np.array([e.score for e in rows], np.float64), np.array([e.count for e in rows], np.int64))
    # a snapshot of an earlier token (scrubbing) keeps only pairs that had co-fired by then
    earlier = snapshot.position if snapshot.tokens_seen < graph.tokens_seen else None
    a, b, count, weight = graph._edges.columns(snapshot.ids, by_position=earlier)
    if kind == "cooccurrence":
        score = weight
    else:
        score = npmi_array(count, graph.firing_counts(a), graph.firing_counts(b), graph.tokens_seen)
        if kind == "npmi":
            keep = (score > 0.0) & (count >= min_support)
            a, b, count, score = a[keep], b[keep], count[keep], score[keep]
    order = np.lexsort((b, a, -count, -score))[:max_edges]
    return a[order], b[order], score[order], count[order]


def score_edges(graph, snapshot, kind: str = "npmi", min_support: int = 2,
                w_dec: torch.Tensor | None = None, max_edges: int = 1500,
                min_cosine: float = 0.2) -> list[ScoredEdge]:
    """The edges to draw among ``snapshot``'s nodes, strongest first.

    - ``npmi``: co-firing pairs with NPMI > 0 and at least ``min_support`` shared tokens.
    - ``npmi_all``: every co-firing pair, scored by NPMI (chance and below included).
    - ``cooccurrence``: every co-firing pair, scored by its summed co-activation.
    - ``decoder``: pairs of the snapshot's nodes whose decoder rows have cosine
      ≥ ``min_cosine`` (needs ``w_dec``), whether or not they co-fired.
    """
    a, b, score, count = score_edge_columns(graph, snapshot, kind, min_support, w_dec, max_edges, min_cosine)
    return [ScoredEdge(int(x), int(y), float(v), int(c))
            for x, y, v, c in zip(a.tolist(), b.tolist(), score.tolist(), count.tolist())]


def decoder_cosines(w_dec: torch.Tensor, indices: list[int]) -> torch.Tensor:
    """Cosine similarity matrix of the decoder rows of ``indices``."""
    rows = w_dec[torch.tensor(indices, dtype=torch.long, device=w_dec.device)].float()
    rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return rows @ rows.T


def decoder_edges(w_dec, indices: list[int], graph=None, min_cosine: float = 0.2,
                  max_edges: int = 1500) -> list[ScoredEdge]:
    """Pairs among ``indices`` whose decoder directions have cosine ≥ ``min_cosine``."""
    if w_dec is None or len(indices) < 2:
        return []
    with torch.no_grad():
        cos = decoder_cosines(w_dec, indices)
        upper = torch.triu(torch.ones_like(cos, dtype=torch.bool), diagonal=1)
        ii, jj = torch.nonzero((cos >= min_cosine) & upper, as_tuple=True)
        vals = cos[ii, jj]
        order = vals.argsort(descending=True)[:max_edges]
    out = []
    for k in order.tolist():
        a, b = sorted((indices[int(ii[k])], indices[int(jj[k])]))
        count = graph.cofire_count(a, b) if graph is not None else 0
        out.append(ScoredEdge(a, b, float(vals[k]), count))
    return out


def npmi_neighbours(graph, index: int, n: int = 8, min_support: int = 1) -> list[tuple[int, float, int]]:
    """A feature's strongest co-firing neighbours by NPMI: (index, npmi, count)."""
    rows = []
    total = graph.tokens_seen
    for other, count, _ in graph.neighbours(index, n=10**9):
        if count < min_support:
            continue
        rows.append((other, npmi(count, graph.firing_count(index), graph.firing_count(other), total), count))
    rows.sort(key=lambda r: (-r[1], -r[2], r[0]))
    return rows[:n]
