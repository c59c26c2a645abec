"""Logits → the next token: repetition penalty, temperature, top-k, top-p.

Deterministic for a given ``torch.Generator`` seed on CPU.

Worked example::

    gen = torch.Generator().manual_seed(0)
    choice = sample_next(logits, history=[464, 3139], temperature=0.8, top_k=50,
                         top_p=0.95, repetition_penalty=1.1, generator=gen)
    choice.token_id, choice.prob, choice.sampled_prob
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Choice:
    token_id: int
    prob: float  # softmax of the raw logits (temperature 1)
    sampled_prob: float  # probability under the distribution actually sampled from
    # the distribution sampled from (as sampling_distribution returns it; None when greedy),
    # kept so a step can report its other candidates' sampled probabilities (axon_core.decision)
    probs: torch.Tensor | None = field(default=None, compare=False, repr=False)
    ids: torch.Tensor | None = field(default=None, compare=False, repr=False)


def penalise_repeats(logits: torch.Tensor, history: list[int], penalty: float) -> torch.Tensor:
    """CTRL-style repetition penalty (as in Hugging Face ``generate``): a token
    already in ``history`` has its logit divided by ``penalty`` if positive,
    multiplied if negative."""
    if penalty == 1.0 or not history:
        return logits
    logits = logits.clone()
    seen = torch.tensor(sorted(set(history)), device=logits.device)
    vals = logits[seen]
    logits[seen] = torch.where(vals > 0, vals / penalty, vals * penalty)
    return logits


def sampling_distribution(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Probabilities to sample from after temperature, top-k and top-p (nucleus).

    Returns ``(probs, token_ids)``: with top-k on, ``probs`` covers only the
    ``top_k`` best tokens, listed in ``token_ids`` (strongest first), so the
    full 50k-entry softmax and sort are skipped; otherwise ``token_ids`` is None
    and ``probs`` covers the whole vocabulary.
    """
    ids = None
    logits = logits.float()
    if 0 < top_k < logits.shape[-1]:
        logits, ids = logits.topk(top_k)  # sorted, strongest first
    probs = (logits / temperature).softmax(-1)
    if top_p < 1.0:
        sorted_p, order = (probs, None) if ids is not None else probs.sort(descending=True)
        # Drop a token once the mass before it already reaches top_p (the top one always stays).
        drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p
        if order is not None:
            drop = drop.scatter(0, order, drop)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum()
    return probs, ids


def sample_next(
    logits: torch.Tensor,
    history: list[int],
    temperature: float,
    top_k: int,
    top_p: float,
    repetition_penalty: float,
    generator: torch.Generator,
) -> Choice:
    """Choose the next token from one position's logits ``[d_vocab]``."""
    logits = logits.float()
    log_z = torch.logsumexp(logits, -1)

    def raw_prob(token: int) -> float:
        return float((logits[token] - log_z).exp())

    adjusted = penalise_repeats(logits, history, repetition_penalty)
    if temperature <= 0:
        token = int(adjusted.argmax())
        return Choice(token, raw_prob(token), 1.0)
    probs, ids = sampling_distribution(adjusted, temperature, top_k, top_p)
    pick = int(torch.multinomial(probs.cpu(), 1, generator=generator))  # CPU RNG: same on any device
    token = int(ids[pick]) if ids is not None else pick
    return Choice(token, raw_prob(token), float(probs[pick]), probs, ids)
