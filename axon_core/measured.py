"""The decision strip's *measured* flavour: each of a token's strongest features
ablated in turn at the position that chose it, and what that did to the choice.

The third flavour beside the direct path and activation × gradient
(:mod:`axon_core.decision`): no linear approximation, the model itself re-run.
At the deciding position ``p`` the feature's part of the SAE's reconstruction
(``decode(a with only f) − decode(0)``, so the SAE's error term stays in the
residual) is subtracted from the hook point's activation, and only that
position runs on from the hook point up (the earlier positions' keys and
values are the run's: causal attention, they do not depend on it), all
ablations in one batch as in the causal check (:func:`axon_core.depth.causal_check`).
Reported per feature: the change in ``logit(chosen) − logit(other)`` and in the
chosen token's probability (temperature 1), ablated minus as run.

:func:`gradient_pushes_fast` (here for the same resume, not in
:mod:`axon_core.decision`, which the token loop imports) is the gradient
flavour through that resume, for GPT-2.

Worked example::

    m = measured_effects(pair.model, pair.sae, pair.hook_name, tokens, position=5,
                         chosen=6342, other=262)           # the 8 strongest features at position 5
    m.features[0], m.d_logit_diff[0], m.d_prob[0]         # (7124, -1.9, -0.21): it pushed for ' Paris'
    m.logit_diff, m.prob                                   # as run: 2.3, 0.41
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import torch

from .depth import _resume, _tl_acts, _tl_resume
from .features import top_features
from .residuals import FastStepper, FastWeights

N_MEASURED = 8  # features ablated, strongest first
MEASURED = ("measured (each feature ablated in turn at this position, which is re-run from the SAE's hook "
            "point up; the change in the logit difference and in the chosen token's probability)")


@dataclass(frozen=True)
class Measured:
    """What ablating each feature did to one choice (``d_*``: ablated − as run)."""

    features: tuple[int, ...]  # SAE indices, strongest first
    activations: tuple[float, ...]
    logit_diff: float  # logit(chosen) − logit(other) as run
    prob: float  # the chosen token's probability as run (temperature 1)
    d_logit_diff: tuple[float, ...]
    d_prob: tuple[float, ...]


def _logits(model, resid: torch.Tensor) -> torch.Tensor:
    """Final LayerNorm (TransformerLens's own module) and unembedding of final-residual
    rows [B, d]. ``h @ W_U + b_U`` directly: TransformerLens's Unembed makes W_U
    contiguous on every call (a 150 MB copy for GPT-2, half of this flavour's time)."""
    h = model.ln_final(resid[:, None].to(model.cfg.dtype))[:, 0]
    logits = (h @ model.W_U + model.b_U).float()
    cap = getattr(model.cfg, "output_logits_soft_cap", 0) or 0
    return cap * torch.tanh(logits / cap) if cap > 0 else logits


@torch.inference_mode()
def measured_effects(model: Any, sae: Any, hook_name: str, tokens: torch.Tensor, position: int, chosen: int,
                     other: int, features: Sequence[int] | None = None, k: int = N_MEASURED,
                     threshold: float = 0.0, weights: FastWeights | None = None,
                     edit: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Measured:
    """Ablate each of ``features`` (default: the ``k`` strongest at ``position``,
    above ``threshold``) in turn at ``hook_name``, ``position`` of ``tokens`` (the
    run's model input, BOS first; later tokens are not read), and measure the
    choice made there: ``chosen`` against ``other``. ``edit``: the run's own edit
    at the hook (steering), applied first as the run did. ``weights``: the GPT-2
    fast path's weights (else TransformerLens's forward, any family)."""
    tokens = torch.as_tensor(tokens, dtype=torch.long).flatten()
    if not 0 <= position < tokens.shape[0]:
        raise ValueError(f"position {position} is outside the run's {tokens.shape[0]} tokens")
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    prefix = tokens[: position + 1]
    edits = {hook_name: edit} if edit is not None else {}
    stepper = None
    if isinstance(weights, FastWeights):
        prefix = prefix.to(weights.W_E.device)
        stepper = FastStepper(weights, hook_name, edit, capacity=position + 1)
        x = stepper.step(prefix).acts[position]
    else:
        prefix = prefix.to(model.cfg.device)
        x = _tl_acts(model, prefix, hook_name, edits)[position]
    code = sae.encode(x[None].to(sae.dtype))[0]
    if features is None:
        features = [i for i, _ in top_features(code, k, threshold)]
    features = [int(f) for f in features]
    n = len(features)
    codes = torch.zeros(n + 1, code.shape[-1], dtype=code.dtype, device=code.device)
    if n:
        idx = torch.tensor(features, device=codes.device)
        codes[torch.arange(1, n + 1, device=codes.device), idx] = code[idx]
    removed = sae.decode(codes) - sae.decode(codes[:1])  # row 0: nothing removed
    xs = x[None] - removed.to(x.dtype).reshape(n + 1, *x.shape)
    if stepper is not None:
        got = _resume(weights, stepper, position, xs, hook_name, [last])
    else:
        got = _tl_resume(model, prefix, position, xs, hook_name, [last], edits)
    logits = _logits(model, got[last])
    diff = logits[:, int(chosen)] - logits[:, int(other)]
    prob = logits.log_softmax(-1)[:, int(chosen)].exp()
    return Measured(tuple(features), tuple(code[features].tolist()) if n else (), float(diff[0]), float(prob[0]),
                    tuple((diff[1:] - diff[0]).tolist()), tuple((prob[1:] - prob[0]).tolist()))


def gradient_pushes_fast(weights, model, sae, hook_name: str, tokens: torch.Tensor, position: int,
                         features: Sequence[int], chosen: int, other: int,
                         edit: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[float]:
    """:func:`~axon_core.decision.gradient_pushes` through the GPT-2 fast path (``weights``: its
    :class:`~axon_core.residuals.FastWeights`): the prefix in one batched pass of
    the fast stepper without gradients (its keys and values then held fixed,
    copied out of inference mode), then only the one position from the hook
    point up (:func:`axon_core.depth._resume`, the causal check's resume) with
    gradients, and the two logits it needs (final LayerNorm, two unembedding
    columns), so the backward runs through one row of the later blocks only."""
    tokens = torch.as_tensor(tokens, dtype=torch.long).flatten()[: position + 1].to(weights.W_E.device)
    with torch.inference_mode():
        stepper = FastStepper(weights, hook_name, edit, capacity=position + 1)
        x = stepper.step(tokens).acts[position]
    with torch.no_grad():  # plain tensors: inference tensors cannot take part in autograd
        held = SimpleNamespace(keys=stepper.keys.clone(), values=stepper.values.clone())
        x = x.clone()
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    pick = torch.tensor([int(chosen), int(other)], device=x.device)
    with torch.enable_grad():
        a = sae.encode(x[None])[0].detach().requires_grad_(True)
        recon = sae.decode(a[None])[0]
        xs = (x + recon - recon.detach())[None]  # the same value; gradient through the decoder
        resid = _resume(weights, held, position, xs, hook_name, [last])[last]
        two = model.ln_final(resid[:, None])[:, 0] @ model.W_U[:, pick] + model.b_U[pick]
        (grad,) = torch.autograd.grad(two[0, 0] - two[0, 1], a)
    idx = torch.tensor(list(features), dtype=torch.long, device=a.device)
    return (a.detach()[idx] * grad[idx]).tolist()
