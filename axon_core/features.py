"""Residuals → features: SAE encode, top-k, and each feature's direct logit attribution.

Worked example (numbers from a real run would differ)::

    acts = sae.encode(resid)                      # [pos, d_sae]
    hits = top_features(acts[3], k=3, threshold=0.1)
    # [FeatureHit(index=7124, activation=6.2), FeatureHit(index=88, activation=2.9), ...]
    attributions = direct_logit_attribution(
        [h.index for h in hits], [h.activation for h in hits],
        sae.W_dec, model.W_U[:, next_token], final_scale=scale[3],
    )

Everything here is a pure function of tensors; nothing keeps state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class FeatureHit:
    """One SAE feature firing on one token.

    ``attribution`` is the feature's direct logit attribution to the token
    chosen *after* this position (see :func:`direct_logit_attribution`), or
    ``None`` where there is no next token or the SAE's decoder does not write
    into the residual stream (e.g. ``hook_z`` SAEs).

    ``layer`` is the block of the SAE's hook point (8 for
    ``blocks.8.hook_resid_pre``) in a run that reads several SAEs, so that
    ``(layer, index)`` names a feature; ``None`` in a run of one SAE.
    """

    index: int
    activation: float
    attribution: float | None = None
    layer: int | None = None

    @property
    def key(self) -> int:
        """The feature's name in a run's graph: its index, or, with a layer, :func:`node_key`."""
        return node_key(self.layer, self.index)


# A run that reads several SAEs keeps one graph whose nodes are (layer, index)
# pairs, packed into one integer so that graphs, layouts and figures stay
# numpy columns of int64: the index plus (layer + 1) × 2²⁴ (wider than any SAE).
LAYER_STRIDE = 1 << 24


def node_key(layer: int | None, index: int) -> int:
    """One integer for feature ``index`` of the SAE at ``layer`` (None: a run of one SAE).

    >>> node_key(None, 7124), node_key(0, 7124), node_key(8, 7124)
    (7124, 16784340, 151002068)
    >>> split_key(151002068), split_key(7124)
    ((8, 7124), (None, 7124))
    """
    return int(index) if layer is None else (int(layer) + 1) * LAYER_STRIDE + int(index)


def split_key(key: int) -> tuple[int | None, int]:
    """(layer, index) of a :func:`node_key`."""
    key = int(key)
    if key < LAYER_STRIDE:
        return None, key
    layer, index = divmod(key, LAYER_STRIDE)
    return layer - 1, index


def split_keys(keys) -> tuple[np.ndarray, np.ndarray]:
    """:func:`split_key` of many keys at once: (layer, index) columns, layer −1 for a run of one SAE."""
    keys = np.asarray(keys, np.int64)
    layered = keys >= LAYER_STRIDE
    return np.where(layered, keys // LAYER_STRIDE - 1, -1), np.where(layered, keys % LAYER_STRIDE, keys)


def key_name(key: int) -> str:
    """How a feature is written for people: ``#7124``, or ``L8 #7124`` in a layered run."""
    layer, index = split_key(key)
    return f"#{index}" if layer is None else f"L{layer} #{index}"


def top_features(acts: torch.Tensor, k: int, threshold: float) -> list[tuple[int, float]]:
    """The ``k`` strongest features of one position's activations ``[d_sae]``
    whose activation is above ``threshold``, strongest first, as (index, activation).

    >>> top_features(torch.tensor([0.0, 3.0, 0.05, 1.0]), k=2, threshold=0.1)
    [(1, 3.0), (3, 1.0)]
    """
    k = max(0, min(int(k), acts.shape[-1]))
    if k == 0:
        return []
    values, indices = acts.topk(k)
    keep = values > threshold
    return [(int(i), float(v)) for i, v in zip(indices[keep].tolist(), values[keep].tolist())]


def equal_up_to_ties(got: list[tuple[int, float]], want: list[tuple[int, float]], tol: float = 1e-5) -> bool:
    """Whether two top-feature lists (strongest first, as :func:`top_features` gives)
    are the same features with the same activations (to ``tol``, relative above 1),
    where features whose activations tie (within ``tol``) may come in either order,
    and a tie at the end of the lists may have been cut either way.

    >>> equal_up_to_ties([(4, 24.0535), (9, 24.0535), (1, 3.0)], [(9, 24.0535), (4, 24.0535), (1, 3.0)])
    True
    >>> equal_up_to_ties([(4, 5.0), (9, 2.0)], [(9, 5.0), (4, 2.0)])
    False
    >>> equal_up_to_ties([(1, 3.0), (4, 2.0)], [(1, 3.0), (7, 2.0)])  # a tie cut at k
    True
    """
    if len(got) != len(want):
        return False

    def close(a: float, b: float) -> bool:
        return abs(a - b) <= tol * max(1.0, abs(a), abs(b))

    if not all(close(a, b) for (_, a), (_, b) in zip(got, want)):
        return False
    i = 0
    while i < len(got):  # runs of tied activations: the same set of features (the last may be cut at k)
        j = i + 1
        while j < len(got) and close(got[j][1], got[i][1]) and close(want[j][1], want[i][1]):
            j += 1
        if j < len(got) and {f for f, _ in got[i:j]} != {f for f, _ in want[i:j]}:
            return False
        i = j
    return True


def decoder_logit_effect(
    w_dec_rows: torch.Tensor,
    w_u_column: torch.Tensor,
    final_scale: float,
    centre: bool = True,
    ln_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """How much one unit of each feature moves one token's logit, directly.

    ``((centre(W_dec[f]) / final_scale) * ln_weight) · W_U[:, t]`` for each row f,
    i.e. the decoder direction sent through the final LayerNorm frozen at this
    position's scale (centring as LayerNorm does, unless the model uses RMSNorm)
    and through the unembedding column of token t.
    """
    d = w_dec_rows
    if centre:
        d = d - d.mean(-1, keepdim=True)
    d = d / final_scale
    if ln_weight is not None:
        d = d * ln_weight
    return d @ w_u_column


def direct_logit_attribution(
    indices: list[int],
    activations: list[float],
    w_dec: torch.Tensor,
    w_u_column: torch.Tensor,
    final_scale: float,
    centre: bool = True,
    ln_weight: torch.Tensor | None = None,
) -> list[float]:
    """Direct logit attribution of active features to the chosen token t:

        attr_f = a_f · ((W_dec[f] − mean(W_dec[f])) / σ_p) · W_U[:, t]

    where a_f is the feature's activation at position p, σ_p the final
    LayerNorm's scale at p (``ln_final.hook_scale``), and W_U the model's
    (LayerNorm-folded) unembedding. It is the part of token t's logit that the
    feature's decoder direction writes straight through the residual stream,
    ignoring every later layer. With TransformerLens's ``fold_ln`` the LayerNorm
    weight lives inside W_U; otherwise pass it as ``ln_weight``.
    """
    if not indices:
        return []
    rows = w_dec[torch.tensor(indices, device=w_dec.device)]
    effect = decoder_logit_effect(rows, w_u_column, final_scale, centre, ln_weight)
    acts = torch.tensor(activations, dtype=effect.dtype, device=effect.device)
    return (acts * effect).tolist()
