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

In a run of several layers (nodes keyed by :func:`~axon_core.features.node_key`)
the third, **virtual weights**, joins features of different layers by how
strongly the earlier one's decoder direction writes along the later one's
encoder direction, ``W_dec_a[f] · W_enc_b[:, g]`` (see
:func:`axon_core.depth.virtual_weights`), signed; within a layer it keeps the
NPMI edges.

Worked example::

    npmi(count_ab=25, count_a=50, count_b=50, n=100)   # 0.0  (independent)
    npmi(30, 30, 30, 100)                              # 1.0  (always together)
    npmi(0, 30, 30, 100)                               # -1.0 (never together)
    scored = score_edges(graph, snapshot, kind="npmi")  # [(a, b, npmi, count), ...] above chance
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .depth import virtual_weights
from .features import split_key, split_keys

EDGE_KINDS = ("npmi", "npmi_all", "cooccurrence", "decoder", "virtual")
SIGNED_KINDS = ("virtual",)  # scores with a sign, drawn in two colours
VIRTUAL_MIN = 0.25  # virtual-weight edges drawn: |w| ≥ this share of the strongest on screen


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


def top_rank(score: np.ndarray, count: np.ndarray, a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """``np.lexsort((b, a, -count, -score))[:n]`` (highest score first, then most
    co-firings, then by (a, b)), sorting only the rows that can make the first
    ``n`` (score at least the n-th largest; ties at the cut included), not every pair.

    >>> s, c, x = np.array([0.5, 0.9, 0.5, 0.1]), np.array([1, 1, 2, 1]), np.arange(4)
    >>> top_rank(s, c, x, x, 2).tolist(), np.lexsort((x, x, -c, -s))[:2].tolist()
    ([1, 2], [1, 2])
    """
    if n <= 0:
        return np.zeros(0, np.intp)
    if len(score) <= n:
        return np.lexsort((b, a, -count, -score))
    cut = np.partition(score, len(score) - n)[len(score) - n]  # the n-th largest score
    rows = np.flatnonzero(score >= cut)
    return rows[np.lexsort((b[rows], a[rows], -count[rows], -score[rows]))[:n]]

@dataclass(frozen=True)
class ScoredEdge:
    source: int
    target: int
    score: float  # NPMI, co-fire weight, or decoder cosine, by kind
    count: int  # tokens the two co-fired on (0 for decoder edges that never co-fired)


def score_edge_columns(graph, snapshot, kind: str = "npmi", min_support: int = 2,
                       w_dec: torch.Tensor | Mapping[int, torch.Tensor] | None = None, max_edges: int = 1500,
                       min_cosine: float = 0.2, saes: Mapping[int, Any] | None = None,
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`score_edges` as numpy columns (source, target, score, count), strongest first."""
    if kind not in EDGE_KINDS:
        raise ValueError(f"unknown edge kind {kind!r}; expected one of {EDGE_KINDS}")
    if kind == "decoder":
        rows = decoder_edges(w_dec, snapshot.ids.tolist(), graph, min_cosine, max_edges)
        return _columns(rows)
    if kind == "virtual":
        a, b, score, count = score_edge_columns(graph, snapshot, "npmi", min_support, max_edges=max_edges)
        layer_a, _ = split_keys(a)
        layer_b, _ = split_keys(b)
        same = layer_a == layer_b
        across = list(virtual_edge_columns(saes or {}, snapshot.ids, graph))
        if len(across[2]):  # on NPMI's scale: the strongest virtual weight on screen is ±1
            across[2] = across[2] / np.abs(across[2]).max()
        merged = [np.concatenate([x[same], y]) for x, y in zip((a, b, score, count), across)]
        order = np.lexsort((merged[1], merged[0], -np.abs(merged[2])))[:max_edges]
        return tuple(m[order] for m in merged)
    # a snapshot of an earlier token (scrubbing) keeps only pairs that had co-fired by then
    earlier = snapshot.position if snapshot.tokens_seen < graph.tokens_seen else None
    a, b, count, weight = graph._edges.columns(snapshot.ids, by_position=earlier)
    if kind == "cooccurrence":
        score = weight
    else:
        if kind == "npmi":  # pairs below the support are dropped anyway: score only the others
            some = count >= min_support
            a, b, count = a[some], b[some], count[some]
        fired = graph.firing_counts(np.concatenate([a, b]))
        score = npmi_array(count, fired[: len(a)], fired[len(a):], graph.tokens_seen)
        if kind == "npmi":
            keep = score > 0.0
            a, b, count, score = a[keep], b[keep], count[keep], score[keep]
    order = top_rank(score, count, a, b, max_edges)
    return a[order], b[order], score[order], count[order]


def score_edges(graph, snapshot, kind: str = "npmi", min_support: int = 2,
                w_dec: torch.Tensor | Mapping[int, torch.Tensor] | None = None, max_edges: int = 1500,
                min_cosine: float = 0.2, saes: Mapping[int, Any] | None = None) -> list[ScoredEdge]:
    """The edges to draw among ``snapshot``'s nodes, strongest first.

    - ``npmi``: co-firing pairs with NPMI > 0 and at least ``min_support`` shared tokens.
    - ``npmi_all``: every co-firing pair, scored by NPMI (chance and below included).
    - ``cooccurrence``: every co-firing pair, scored by its summed co-activation.
    - ``decoder``: pairs of the snapshot's nodes whose decoder rows have cosine
      ≥ ``min_cosine`` (needs ``w_dec``: one tensor, or ``{layer: W_dec}`` in a
      run of several layers), whether or not they co-fired.
    - ``virtual`` (a run of several layers; needs ``saes``, ``{layer: SAE}``):
      within a layer as ``npmi``; across layers, signed virtual weights
      (:func:`virtual_edge_columns`), scaled so the strongest on screen is ±1.
    """
    a, b, score, count = score_edge_columns(graph, snapshot, kind, min_support, w_dec, max_edges, min_cosine,
                                            saes)
    return [ScoredEdge(int(x), int(y), float(v), int(c))
            for x, y, v, c in zip(a.tolist(), b.tolist(), score.tolist(), count.tolist())]


def _columns(rows: list[ScoredEdge]):
    return (np.array([e.source for e in rows], np.int64), np.array([e.target for e in rows], np.int64),
            np.array([e.score for e in rows], np.float64), np.array([e.count for e in rows], np.int64))


def decoder_rows(w_dec: torch.Tensor | Mapping[int, torch.Tensor], keys: list[int]) -> torch.Tensor:
    """The decoder rows of node ``keys``: from one ``W_dec`` (a run of one SAE),
    or from ``{layer: W_dec}`` by each key's layer."""
    if not isinstance(w_dec, Mapping):
        return w_dec[torch.tensor(keys, dtype=torch.long, device=w_dec.device)].float()
    rows = [w_dec[layer][index].float() for layer, index in map(split_key, keys)]
    return torch.stack(rows) if rows else torch.zeros(0, 1)


def virtual_edge_columns(saes: Mapping[int, Any], keys: list[int], graph=None, max_edges: int = 400,
                         share: float = VIRTUAL_MIN):
    """Virtual weights between the nodes of different layers among ``keys``
    (earlier layer's decoder row · later layer's encoder column, for every pair
    of layers): the ``max_edges`` largest in size that are at least ``share``
    of the largest, as columns (source, target, weight, co-firing count),
    strongest first. ``saes``: ``{layer: SAE}`` (anything with ``W_dec`` / ``W_enc``)."""
    keys = np.asarray(keys, np.int64)
    layer, index = split_keys(keys)
    layers = [la for la in sorted(set(layer.tolist())) if la in saes]
    parts = []
    for i, la in enumerate(layers):
        rows_a = np.flatnonzero(layer == la)
        for lb in layers[i + 1:]:
            rows_b = np.flatnonzero(layer == lb)
            v = virtual_weights(saes[la], saes[lb], index[rows_a], index[rows_b]).float().cpu().numpy().ravel()
            top = np.argpartition(-np.abs(v), min(max_edges, len(v)) - 1)[:max_edges] if len(v) else v[:0]
            r, c = np.divmod(top, len(rows_b))
            parts.append((keys[rows_a[r]], keys[rows_b[c]], v[top].astype(np.float64)))
    if not parts:
        z = np.zeros(0, np.int64)
        return z, z, np.zeros(0), z
    a, b, w = (np.concatenate(col) for col in zip(*parts))
    keep = (np.abs(w) >= share * np.abs(w).max()) & (w != 0)
    a, b, w = a[keep], b[keep], w[keep]
    order = np.lexsort((b, a, -np.abs(w)))[:max_edges]
    a, b, w = a[order], b[order], w[order]
    count = np.array([graph.cofire_count(x, y) for x, y in zip(a.tolist(), b.tolist())], np.int64) \
        if graph is not None else np.zeros(len(a), np.int64)
    return a, b, w, count


def decoder_cosines(w_dec: torch.Tensor | Mapping[int, torch.Tensor], indices: list[int]) -> torch.Tensor:
    """Cosine similarity matrix of the decoder rows of ``indices`` (node keys)."""
    rows = decoder_rows(w_dec, indices)
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
