"""Finished runs' keys and values, kept (bounded by bytes) so that a fork computes only what follows it.

A fork of a run at position ``p`` needs the model's keys and values of the
positions before ``p``: they are the run's own (same tokens, same steering),
so when the run's are still at hand the fork copies them into its own
stepper and feeds only the forced token and what follows (see
:mod:`axon_core.fork`). The engine keeps the keys and values of its most
recent finished runs here, least recently used first out, within a byte
budget (``AXON_FORK_KV_MB``, 64 MB by default: about seven 128-token GPT-2-small
runs at 9.4 MB each). An evicted run's tensors are dropped (nothing else
refers to them), so memory stays bounded however many runs finish; a fork of
an evicted run recomputes its prefix in one batched pass, as before.

What the keys and values depend on besides the tokens is the run's
``owner``: the SAE whose hook point a steering edit changes and the steering
itself (the engine uses ``(release, sae_id, steer)``); the features read, the
watch list and the sampling settings do not change them.

Worked example::

    store = KVStore(64 << 20)
    store.put(generation.keep_kv(("gpt2-small-res-jb", "blocks.8.hook_resid_pre", ())))
    kept = store.find(owner, ids[:p])      # a run whose first p tokens are ids[:p], or None
    kept.keys.shape                        # [n_layers, n_kv_heads, positions, d_head]
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import torch

DEFAULT_BYTES = 64 << 20
ENV = "AXON_FORK_KV_MB"


@dataclass(frozen=True, eq=False)
class KeptKV:
    """One finished run's keys and values: ``keys[:, :, i]`` is position ``i`` of ``tokens``."""

    owner: tuple  # what else the keys and values depend on (see the module docstring)
    tokens: tuple[int, ...]  # the model input they were computed from (BOS first where the run has one)
    keys: torch.Tensor  # [n_layers, n_kv_heads, len(tokens), d_head], owned (no other tensor shares it)
    values: torch.Tensor

    @property
    def nbytes(self) -> int:
        return self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size()

    def covers(self, ids: Sequence[int]) -> bool:
        """Whether these are the keys and values of ``ids``'s positions (a prefix of :attr:`tokens`)."""
        ids = tuple(int(i) for i in ids)
        return len(ids) <= len(self.tokens) and self.tokens[: len(ids)] == ids


def budget_from_env(value: str | None = None) -> int:
    """The store's byte budget: ``AXON_FORK_KV_MB`` megabytes (0 keeps nothing), else 64 MB."""
    raw = os.environ.get(ENV) if value is None else value
    try:
        mb = float(raw) if raw not in (None, "") else None
    except ValueError:
        mb = None
    return DEFAULT_BYTES if mb is None or mb != mb or mb < 0 else int(mb * (1 << 20))


class KVStore:
    """Kept runs' keys and values, at most ``max_bytes`` in all, least recently used evicted first (thread-safe)."""

    def __init__(self, max_bytes: int = DEFAULT_BYTES):
        self.max_bytes = int(max_bytes)
        self._entries: "OrderedDict[int, KeptKV]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.evicted = 0

    def put(self, kept: KeptKV | None) -> bool:
        """Keep ``kept`` (the newest); evict the least recently used until within budget.
        False (and nothing kept) when it alone is larger than the budget."""
        if kept is None or kept.nbytes > self.max_bytes:
            return False
        with self._lock:
            for key, old in list(self._entries.items()):  # the same run's keys twice: keep one
                if old.owner == kept.owner and old.tokens == kept.tokens:
                    self._drop(key)
            self._entries[id(kept)] = kept
            self._bytes += kept.nbytes
            while self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))
                self.evicted += 1
        return True

    def _drop(self, key: int) -> None:
        old = self._entries.pop(key)
        self._bytes -= old.nbytes

    def find(self, owner: tuple, ids: Sequence[int]) -> KeptKV | None:
        """A kept run of ``owner`` whose first ``len(ids)`` tokens are ``ids`` (now the most recently used), or None."""
        with self._lock:
            for key, kept in reversed(self._entries.items()):
                if kept.owner == owner and kept.covers(ids):
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return kept
            self.misses += 1
        return None

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"runs": len(self._entries), "bytes": self._bytes, "max_bytes": self.max_bytes,
                    "hits": self.hits, "misses": self.misses, "evicted": self.evicted}


def snapshot(stepper: Any, owner: tuple, tokens: Sequence[int]) -> KeptKV | None:
    """A copy of ``stepper``'s keys and values for ``tokens`` (the positions it has fed),
    or None for a stepper whose cache is not laid out as ``keys[layer, head, position]``
    (TransformerLens's own: a fork of its run recomputes the prefix)."""
    keys, values = getattr(stepper, "keys", None), getattr(stepper, "values", None)
    n = len(tokens)
    if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor) or getattr(stepper, "length", -1) != n:
        return None
    return KeptKV(tuple(owner), tuple(int(t) for t in tokens), keys[:, :, :n].clone(), values[:, :, :n].clone())


def resume(stepper: Any, kept: KeptKV, p: int) -> bool:
    """Start ``stepper`` (fresh: nothing fed) at position ``p`` with ``kept``'s keys and
    values of positions ``< p`` copied in (``kept`` itself is never written). False when
    the stepper cannot take them (another cache layout, shape or capacity)."""
    keys = getattr(stepper, "keys", None)
    if (not isinstance(keys, torch.Tensor) or getattr(stepper, "length", None) != 0 or p > len(kept.tokens)
            or keys.shape[:2] != kept.keys.shape[:2] or keys.shape[3:] != kept.keys.shape[3:]):
        return False
    grow = getattr(stepper, "_grow", None)
    if grow is not None:
        grow(p + 1)
    if stepper.keys.shape[2] < p + 1:
        return False
    stepper.keys[:, :, :p] = kept.keys[:, :, :p].to(stepper.keys.dtype)
    stepper.values[:, :, :p] = kept.values[:, :, :p].to(stepper.values.dtype)
    stepper.length = p
    return True
