"""What if another token had been chosen: a run forked at one position.

A fork ``(position, token_id)`` of a run means: the same request (prompt,
settings, seed, steering, SAEs), the same tokens up to ``position`` (those
are the run's own, so they are taken from it), ``token_id`` at ``position``
instead of what was chosen there, and from there on the model writes on as
usual, for as many new tokens in all as the run was asked for. Sampling after
the fork draws from its own random stream, seeded by the run's seed and the
fork (:func:`fork_seed`): the same fork of the same run gives the same tokens,
every time and in every process; at temperature 0 the continuation is the
greedy one from the prefix plus the forced token.

What a fork computes: where the run's keys and values are still at hand (the
engine keeps its recent runs', within a byte budget: :mod:`axon_core.kv_store`),
they are copied for the positions before the fork and only the forced token
and what follows are computed, one KV-cached step each; otherwise (an evicted
run, or TransformerLens's own stepper, whose cache is not copied) one batched
forward over the prefix and the forced token, like a prompt, then one step per
new token. Either way the steps before the fork are the run's own, and the
tokens are the same (``Generation.kv_reused`` and ``positions_computed`` say
which way it went).

Worked example::

    fork = Fork(7, 6342)                               # ' Paris' forced at position 7
    base = list(generate(pair, prompt, settings))      # the run (steps at positions 1..n)
    steps = list(generate(pair, prompt, settings, fork=fork, base=base))   # the prefix recomputed
    g = Generation(pair, prompt, settings); ...                        # a run kept: g.keep_kv()
    steps = list(generate(pair, prompt, settings, fork=fork, base=base, kv=g.keep_kv()))  # only >= 7 computed
    [s.token_id for s in steps][:6] == [s.token_id for s in base][:6]   # the shared prefix
    steps[6].token_id                                  # 6342
    fork_seed(0, fork)                                 # the continuation's RNG seed
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from .decision import Decision


@dataclass(frozen=True)
class Fork:
    """Force ``token_id`` at token ``position`` (BOS = 0) of a run, then let it continue."""

    position: int
    token_id: int

    @classmethod
    def of(cls, value) -> "Fork | None":
        """A Fork from ``(position, token_id)`` (a RunRequest's ``fork``), a Fork, or None."""
        if value is None or isinstance(value, Fork):
            return value
        position, token_id = value
        return cls(int(position), int(token_id))

    def as_tuple(self) -> tuple[int, int]:
        return self.position, self.token_id


class ForkError(ValueError):
    """A fork that cannot be made of this run; ``str(err)`` is for people."""


def fork_seed(seed: int, fork: Fork) -> int:
    """The seed of the fork's sampling after the forced token: a hash of the run's
    seed and the fork (63 bits), the same in every process."""
    digest = hashlib.sha256(f"axon-fork:{int(seed)}:{fork.position}:{fork.token_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def check_fork(fork: Fork, n_positions: int, n_prompt: int, max_new_tokens: int) -> None:
    """Raise :class:`ForkError` unless ``fork`` replaces a generated token of a run
    of ``n_positions`` positions (BOS included), the prompt's ``n_prompt`` first."""
    first, last = n_prompt, n_positions - 1
    if last < first:
        raise ForkError("This run generated no token: there is nothing to fork.")
    if not first <= fork.position <= last or fork.position - n_prompt + 1 > max_new_tokens:
        raise ForkError(f"A fork replaces a generated token: position {fork.position} is not one "
                        f"(this run generated positions {first}–{last}).")


def forked_decision(decision: Decision | None, token_id: int) -> Decision | None:
    """The decision at the position before the fork, with ``token_id`` chosen
    instead (None when it was not among the candidates recorded)."""
    if decision is None or decision.index_of(token_id) is None:
        return None
    cands = tuple(dataclasses.replace(c, chosen=c.token_id == token_id) for c in decision.candidates)
    return dataclasses.replace(decision, candidates=cands, chosen=int(token_id))


def step_before_fork(step, token_id: int):
    """The run's step just before the fork, now choosing ``token_id``: its decision
    re-marked and its features' attributions pointing at the forced token (from the
    decision's direct-path effects, where recorded)."""
    decision = forked_decision(step.decision, token_id)
    hits = step.features
    if decision is not None and decision.effects and len(decision.effects) == len(hits):
        j = decision.index_of(token_id)
        hits = tuple(dataclasses.replace(f, attribution=None if row is None else row[j])
                     for f, row in zip(hits, decision.effects))
    return dataclasses.replace(step, next_token_id=int(token_id), decision=decision, features=hits)
