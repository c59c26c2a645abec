"""Logits → the next token: repetition penalty, temperature, top-k, top-p.

Deterministic for a given ``torch.Generator`` seed on CPU.

Worked example::

    gen = torch.Generator().manual_seed(0)
    choice = sample_next(logits, history=[464, 3139], temperature=0.8, top_k=50,
                         top_p=0.95, repetition_penalty=1.1, generator=gen)
    choice.token_id, choice.prob, choice.sampled_prob
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Choice:
    token_id: int
    prob: float  # softmax of the raw logits (temperature 1)
    sampled_prob: float  # probability under the distribution actually sampled from


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
) -> torch.Tensor:
    """Probabilities to sample from after temperature, top-k and top-p (nucleus)."""
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        # Drop a token once the mass before it already reaches top_p (the top one always stays).
        drop_sorted = (sorted_p.cumsum(-1) - sorted_p) >= top_p
        probs = probs.masked_fill(drop_sorted.scatter(0, order, drop_sorted), 0.0)
        probs = probs / probs.sum()
    return probs


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
    raw = logits.float().softmax(-1)
    adjusted = penalise_repeats(logits, history, repetition_penalty)
    if temperature <= 0:
        token = int(adjusted.argmax())
        return Choice(token, float(raw[token]), 1.0)
    probs = sampling_distribution(adjusted, temperature, top_k, top_p)
    token = int(torch.multinomial(probs.cpu(), 1, generator=generator))  # CPU RNG: same on any device
    return Choice(token, float(raw[token]), float(probs[token]))
