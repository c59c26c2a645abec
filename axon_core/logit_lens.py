"""AXON's own logit lens of a feature: its decoder direction read through the final LayerNorm and the unembedding.

``W_dec[f]`` sent through the final norm as the direct logit attribution sends
it (:func:`~axon_core.features.decoder_logit_effect`: centred where the model
uses LayerNorm, not for RMSNorm; times the norm's weight where TransformerLens
did not fold it into ``W_U``), then ``· W_U``. The norm's scale is taken as 1
(it is a per-position positive number, so the ranking does not depend on it):
the values are logits per unit of the feature at a position whose final scale
is 1. Computed from the loaded weights alone, so it is true offline. With
GPT-2 loaded as SAELens asks (``fold_ln``, ``center_writing_weights``,
``center_unembed``) it is exactly ``W_dec[f] @ W_U``.

Worked example::

    lens = logit_lens(pair.model, pair.sae, pair.hook_name, 4821, k=5)
    lens.pos     # ((6342, 3.1), (4881, 2.9), ...): token id, logit per unit, strongest first
    lens.neg     # the five most pushed down, most negative first
    logit_lens(model, sae_of_hook_z, "blocks.8.attn.hook_z", 1)   # None: that decoder writes no residual
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .features import decoder_logit_effect
from .generation import _attribution_setup


@dataclass(frozen=True)
class Lens:
    pos: tuple[tuple[int, float], ...]  # (token id, logit per unit), most pushed up first
    neg: tuple[tuple[int, float], ...]  # most pushed down first


def logit_lens(model, sae, hook_name: str, index: int, k: int = 10) -> Lens | None:
    """The ``k`` tokens feature ``index`` pushes up and down most, directly; None
    where its decoder does not write into the residual stream."""
    setup = _attribution_setup(_Pair(model, sae, hook_name))
    if setup is None or not 0 <= int(index) < sae.W_dec.shape[0]:
        return None
    with torch.no_grad():
        row = sae.W_dec[int(index)][None].to(model.W_U.dtype)
        effect = decoder_logit_effect(row, model.W_U, 1.0, **setup)[0]
        k = min(int(k), effect.shape[0])
        up, down = torch.topk(effect, k), torch.topk(-effect, k)
    return Lens(tuple(zip(up.indices.tolist(), up.values.tolist())),
                tuple(zip(down.indices.tolist(), (-down.values).tolist())))


@dataclass(frozen=True)
class _Pair:  # what _attribution_setup reads of a LoadedPair
    model: object
    sae: object
    hook_name: str
