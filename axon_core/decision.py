"""The decision at a token: what the model considered, what tipped it, how much the SAE explains.

Three things, each computed inside the token loop from what the step already
has (the logits of the position, the SAE activations, the final LayerNorm
scale): no extra forward pass.

- :func:`candidates`: the top next-token candidates of one position's logits,
  with their probabilities at temperature 1 and under the sampling
  distribution the run actually used (temperature, top-k, top-p, repetition
  penalty), the chosen token marked (and listed even when outside the top 5).
- :func:`direct_effects`: each feature's *direct path* contribution to each
  candidate's logit (its decoder direction through the final LayerNorm, frozen
  at this position's scale, and the candidate's unembedding column), so the
  push of a feature on "chosen rather than other" is one subtraction
  (:meth:`Decision.pushes`); later layers are ignored (the flavour is named
  :data:`DIRECT`).
- :func:`encode_with_fit`: the SAE's activations (SAELens's ``encode``) with
  the top features *and* the reconstruction quality of each row: fraction of
  variance explained ``1 − ‖x − x̂‖² / ‖x − mean(x)‖²`` (``x̂ = decode(encode(x))``,
  ``mean(x)`` the mean of x's entries) and L0 (features active).

Worked example::

    dec = Decision(candidates(logits, choice, tokenizer_text), chosen=choice.token_id,
                   effects=direct_effects(...))
    dec.candidates[0]            # Candidate(token_id=6342, text=' Paris', prob=0.41, sampled_prob=0.55, ...)
    dec.runner_up.text           # ' the'
    dec.pushes(features)         # [(feature key, push on logit(chosen) − logit(runner-up)), ...]
    tops, fits = encode_with_fit(sae, acts, k=12, threshold=0.1)
    fits[0]                      # Fit(fve=0.81, l0=54)
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .features import top_features

N_CANDIDATES = 5
LOW_FVE = 0.5  # below this the SAE explains little of the residual: its features tell less
_FULL: "weakref.WeakSet" = weakref.WeakSet()  # SAEs encoded in full for a fit (see full_encodes)
DIRECT = "direct path (decoder direction through the final LayerNorm and unembedding; later layers ignored)"


@dataclass(frozen=True)
class Candidate:
    """One next token the model considered."""

    token_id: int
    text: str  # whole characters (what the text would show), see :func:`candidate_text`
    prob: float  # softmax of the logits (temperature 1)
    sampled_prob: float | None  # probability under the sampling distribution used (None: not sampled)
    chosen: bool = False


@dataclass(frozen=True)
class Fit:
    """How well one SAE reconstructs the residual at one token."""

    fve: float  # fraction of variance explained
    l0: int  # features active (activation > 0)
    layer: int | None = None  # the SAE's block, in a run of several SAEs

    @property
    def low(self) -> bool:
        return self.fve < LOW_FVE


@dataclass(frozen=True)
class Decision:
    """The choice of the token after this step's position.

    ``effects[i][j]``: the direct-path contribution of the step's feature ``i``
    (in ``step.features`` order) to candidate ``j``'s logit."""

    candidates: tuple[Candidate, ...]
    chosen: int | None  # the token chosen (None: the run ended here)
    effects: tuple[tuple[float, ...], ...] = ()

    def index_of(self, token_id: int | None) -> int | None:
        for j, c in enumerate(self.candidates):
            if c.token_id == token_id:
                return j
        return None

    @property
    def runner_up(self) -> Candidate | None:
        """The most likely candidate (temperature 1) that was not chosen."""
        return next((c for c in self.candidates if c.token_id != self.chosen), None)

    def pushes(self, keys: Sequence[int], other: int | None = None) -> list[tuple[int, float]]:
        """Each feature's push on ``logit(chosen) − logit(other)`` (``other``: a
        candidate's token id, by default the runner-up), direct path, as
        ``(feature key, push)`` in ``keys`` order (the step's features)."""
        c = self.index_of(self.chosen)
        o = self.index_of(self.runner_up.token_id if other is None and self.runner_up else other)
        if c is None or o is None or not self.effects:
            return []
        return [(k, row[c] - row[o]) for k, row in zip(keys, self.effects)]


def candidate_text(decode: Callable[[list[int]], str], pending: Sequence[int], token_id: int) -> str:
    """What choosing ``token_id`` would show, in whole characters: with the
    tokens still ``pending`` (the start of a character split across tokens,
    see :class:`~axon_core.generation.GlyphJoiner`) when it completes one, or
    ``⟨part of a character⟩`` when the token alone cannot be shown."""
    text = decode([*pending, int(token_id)])
    if "\ufffd" in text:
        alone = decode([int(token_id)])
        return alone if "\ufffd" not in alone else "⟨part of a character⟩"
    return text


def sampled_probs(token_ids: Sequence[int], chosen: int | None, probs, ids, greedy: bool) -> list[float | None]:
    """Probabilities of ``token_ids`` under the distribution sampled from
    (``probs`` over ``ids``, or over the vocabulary when ``ids`` is None, as
    :func:`~axon_core.sampling.sampling_distribution` returns it); greedy: 1 for the chosen, 0 else."""
    if greedy:
        return [1.0 if t == chosen else 0.0 for t in token_ids]
    if probs is None:
        return [None] * len(token_ids)
    if ids is None:
        return [float(v) for v in probs[torch.tensor(list(token_ids), device=probs.device)].tolist()]
    where = {int(t): j for j, t in enumerate(ids.tolist())}
    vals = probs.tolist()
    return [vals[where[t]] if t in where else 0.0 for t in token_ids]


def candidates(logits: torch.Tensor, chosen: int | None, text_of: Callable[[int], str], probs=None, ids=None,
               greedy: bool = False, n: int = N_CANDIDATES) -> tuple[Candidate, ...]:
    """The ``n`` most likely next tokens of ``logits`` [d_vocab] at temperature 1,
    strongest first, and the chosen one after them when it is not among them."""
    logits = logits.float()
    top = logits.topk(n)
    log_z = torch.logsumexp(logits, -1)
    tokens = top.indices.tolist()
    if chosen is not None and chosen not in tokens:
        tokens.append(int(chosen))
    ps = (logits[torch.tensor(tokens, device=logits.device)] - log_z).exp().tolist()
    sampled = sampled_probs(tokens, chosen, probs, ids, greedy) if chosen is not None else [None] * len(tokens)
    return tuple(Candidate(int(t), text_of(int(t)), float(p), s, t == chosen)
                 for t, p, s in zip(tokens, ps, sampled))


def direct_effects(indices: Sequence[int], activations: Sequence[float], w_dec: torch.Tensor, w_u: torch.Tensor,
                   token_ids: Sequence[int], final_scale: float, centre: bool = True,
                   ln_weight: torch.Tensor | None = None) -> torch.Tensor:
    """``[len(indices), len(token_ids)]``: each feature's direct logit attribution to
    each token, ``a_f · ((W_dec[f] − mean) / σ · w_ln) · W_U[:, t]`` (as
    :func:`~axon_core.features.direct_logit_attribution`, for several tokens at once)."""
    if not len(indices) or not len(token_ids):
        return torch.zeros(len(indices), len(token_ids))
    rows = w_dec[torch.tensor(list(indices), device=w_dec.device)]
    if centre:
        rows = rows - rows.mean(-1, keepdim=True)
    rows = rows / float(final_scale)
    if ln_weight is not None:
        rows = rows * ln_weight
    cols = w_u[:, torch.tensor(list(token_ids), device=w_u.device)]
    acts = torch.tensor(list(activations), dtype=rows.dtype, device=rows.device)
    return acts[:, None] * (rows @ cols)


def _sparse_decode_ok(sae) -> bool:
    """Whether ``decode`` is plain ``a @ W_dec + b_dec`` (so it can read only the active rows)."""
    try:
        from sae_lens.saes.jumprelu_sae import JumpReLUSAE
        from sae_lens.saes.standard_sae import StandardSAE
    except ImportError:  # pragma: no cover - another SAELens layout
        return False
    if type(sae).decode not in (StandardSAE.decode, JumpReLUSAE.decode):
        return False
    if getattr(sae.cfg, "normalize_activations", "none") not in (None, "none"):
        return False
    if getattr(sae.cfg, "reshape_activations", "none") not in (None, "none"):
        return False
    return not getattr(getattr(sae, "hook_sae_recons", None), "fwd_hooks", None)


@torch.inference_mode()
def fits(sae, x: torch.Tensor, acts: torch.Tensor, layer: int | None = None) -> list[Fit]:
    """The reconstruction quality of each row of ``x`` (hook activations) from
    its SAE activations ``acts`` (``sae.encode(x)``)."""
    n = x.shape[0]
    flat = x.reshape(n, -1).float()
    if _sparse_decode_ok(sae):
        w_dec, b_dec = sae.W_dec.detach(), sae.b_dec.detach()
        recon = []
        for row in acts:
            nz = row.nonzero()[:, 0]
            recon.append(row[nz] @ w_dec[nz] + b_dec)
        recon = torch.stack(recon).reshape(n, -1).float() if n else flat
    else:
        recon = sae.decode(acts).reshape(n, -1).float()
    err = (flat - recon).pow(2).sum(-1)
    total = (flat - flat.mean(-1, keepdim=True)).pow(2).sum(-1)
    fve = torch.where(total > 0, 1 - err / total.clamp_min(1e-30), torch.zeros_like(total))
    l0 = (acts.reshape(n, -1) > 0).sum(-1)
    return [Fit(float(f), int(c), layer) for f, c in zip(fve.tolist(), l0.tolist())]


@torch.inference_mode()
def encode_with_fit(sae, x: torch.Tensor, k: int, threshold: float,
                    layer: int | None = None) -> tuple[list[list[tuple[int, float]]], list[Fit]]:
    """SAELens's ``encode`` of each row of ``x``: its top features (as
    :func:`~axon_core.features.top_features`) and its :class:`Fit`."""
    _FULL.add(sae)
    acts = sae.encode(x)
    return [top_features(row, k, threshold) for row in acts], fits(sae, x, acts, layer)


def full_encodes() -> list[dict]:
    """The SAEs :func:`encode_with_fit` encoded (every activation is needed for
    the fit, so SAELens's float32 ``encode`` runs, not a half-precision screen),
    in the form of :func:`~axon_core.fast_encode.encode_paths` (for ``/engine_stats``)."""
    return [{"hook": getattr(getattr(sae.cfg, "metadata", None), "hook_name", None), "d_sae": int(sae.cfg.d_sae),
             "path": "fp32", "ms": {}, "failed": [], "for": "decisions (every activation, for the fit)"}
            for sae in list(_FULL)]


GRADIENT = ("through the later layers (activation × gradient of the logit difference with respect to the "
            "feature's activation at this position; earlier positions' keys and values held fixed)")


def gradient_pushes(model, sae, hook_name: str, tokens: torch.Tensor, position: int, features: Sequence[int],
                    chosen: int, other: int, edit: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[float]:
    """Each of ``features``' push on ``logit(chosen) − logit(other)`` at ``position``,
    through every later layer: ``a_f · ∂(logit_c − logit_o)/∂a_f``, with the SAE
    spliced in at the hook point at that position only (its reconstruction plus
    the error term, so the forward is unchanged) and one backward pass.

    The earlier positions run first without gradients into TransformerLens's
    KV cache, so their keys and values are held fixed (they do not depend on
    ``a`` anyway: causal attention); then the one position runs with the splice
    and is differentiated. ``tokens``: the run's model input (BOS first where it
    has one); only ``tokens[: position + 1]`` is read. ``edit``: the run's own
    edit at the hook (steering), applied at every position first, as the run did.
    Off the token loop: for the shown token."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    tokens = torch.as_tensor(tokens, dtype=torch.long).flatten()[: position + 1][None].to(model.cfg.device)
    held: dict[str, torch.Tensor] = {}

    def edited(x, hook):
        return edit(x)

    def splice(x, hook):
        if edit is not None:
            x = edit(x)
        xp = x[0, -1]
        a = sae.encode(xp[None].detach())[0].detach().requires_grad_(True)
        recon = sae.decode(a[None])[0]
        held["a"] = a
        x = x.clone()
        x[0, -1] = xp.detach() + recon - recon.detach()  # the same value; gradient through the decoder
        return x

    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, batch_size=1)
    # an explicit all-ones mask, as the TransformerLens stepper: a generated <|endoftext|> (pad = eos) is not masked
    if position > 0:
        prefix = tokens[:, :position]
        with torch.no_grad(), model.hooks(fwd_hooks=[(hook_name, edited)] if edit is not None else []):
            model(prefix, return_type=None, past_kv_cache=cache, attention_mask=torch.ones_like(prefix))
    last = tokens[:, position:]
    with torch.enable_grad(), model.hooks(fwd_hooks=[(hook_name, splice)]):
        logits = model(last, past_kv_cache=cache, attention_mask=torch.ones_like(last))
        diff = logits[0, -1, int(chosen)] - logits[0, -1, int(other)]
        (grad,) = torch.autograd.grad(diff, held["a"])
    idx = torch.tensor(list(features), dtype=torch.long)
    return (held["a"].detach()[idx] * grad[idx]).tolist()
