"""The watch list: a few pinned features whose exact activation every token reports, fired or not.

A run reports each token's top-k features above a threshold; a pinned feature
is followed through the whole run, also where it is weak or below its own
JumpReLU threshold (activation 0 there). Only the pinned features' encoder
columns are read, through the SAE's own encode: the same input processing
(``process_sae_in``: dtype, hooks, activation normalisation, ``b_dec``
subtraction), ``x @ W_enc[:, idx] + b_enc[idx]``, the SAE's activation
function and, for a JumpReLU SAE, its per-feature threshold. So
``Watch.values(acts)[:, j] == sae.encode(acts)[:, idx[j]]`` (float32 rounding).
An SAE whose encode is not elementwise per feature (e.g. TopK) is encoded in
full and the columns picked: exact, not cheap.

Keys are ``(layer, index)``; ``layer`` is None in a run of one SAE (the
run's SAE), a block in a run of several (:func:`resolve_watch` puts keys
into that canonical form, so two requests that watch the same features are
the same request). Links write them as ``7124`` or ``8:7124``
(:func:`format_watch`; parsed by :mod:`axon_core.query`).

Worked example::

    keys, notes = resolve_watch(((None, 7124), (8, 88)), run.saes)   # a run of one SAE at layer 8
    keys                                     # ((None, 7124), (None, 88))
    w = Watch(run.saes, keys)
    w.values_for(0, acts)                    # tensor [rows, 2]: features 7124 and 88 of the primary SAE
    format_watch(((8, 7124), (5, 88)))       # '8:7124,5:88'
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .stepping import hook_layer

MAX_WATCH = 16
WatchKey = tuple  # (layer | None, index)


def format_watch(keys: Sequence[WatchKey]) -> str:
    """``((None, 7124), (8, 88))`` → ``'7124,8:88'`` (a link's ``watch=`` value)."""
    return ",".join(str(int(i)) if la is None else f"{int(la)}:{int(i)}" for la, i in keys)


class _Sae:
    """An SAE and its layer, of a LayerSae or a LoadedPair (anything with ``sae`` and ``hook_name``)."""

    def __init__(self, sae: Any, layer: int | None):
        self.sae, self.layer = sae, layer

    @classmethod
    def of(cls, source: Any) -> "_Sae":
        return cls(source.sae, hook_layer(source.hook_name))


def resolve_watch(keys: Sequence[WatchKey], saes: Sequence[Any]) -> tuple[tuple[WatchKey, ...], list[str]]:
    """``keys`` in the run's canonical form (see the module doc), distinct, in order,
    at most :data:`MAX_WATCH`; keys naming a layer the run does not read, or an index
    beyond its SAE's width, are left out with a notice. ``saes``: the run's
    :class:`~axon_core.generation.LayerSae` s (or LoadedPairs), primary first."""
    saes = [_Sae.of(s) for s in saes]
    layered = len(saes) > 1
    by_layer = {s.layer: s for s in saes}
    primary = saes[0].layer
    out: list[WatchKey] = []
    skipped: list[str] = []
    for layer, index in keys:
        layer = primary if layer is None else int(layer)
        sae = by_layer.get(layer) if layer is not None else saes[0]
        if sae is None or not 0 <= int(index) < int(sae.sae.cfg.d_sae):
            skipped.append(f"{layer}:{index}" if layer is not None else str(index))
            continue
        key = (layer if layered else None, int(index))
        if key not in out:
            out.append(key)
    notes = []
    if skipped:
        more = f" (+{len(skipped) - 1} more)" if len(skipped) > 1 else ""
        notes.append(f"watch: {skipped[0]}{more} is not a feature of this run's SAEs, not watched")
    if len(out) > MAX_WATCH:
        notes.append(f"watch: kept the first {MAX_WATCH} features, dropped {len(out) - MAX_WATCH}")
        out = out[:MAX_WATCH]
    return tuple(out), notes


def _columnwise(sae) -> bool:
    """Whether ``sae.encode`` is elementwise per feature after the input processing
    (standard and JumpReLU SAEs with an elementwise activation, no hooks after the input)."""
    try:
        from sae_lens.saes.jumprelu_sae import JumpReLUSAE
        from sae_lens.saes.standard_sae import StandardSAE
    except ImportError:  # pragma: no cover - another SAELens layout
        return False
    if type(sae).encode not in (StandardSAE.encode, JumpReLUSAE.encode) or not hasattr(sae, "process_sae_in"):
        return False
    if not isinstance(sae.activation_fn, (torch.nn.ReLU, torch.nn.Identity)):
        return False
    points = [getattr(sae, name, None) for name in ("hook_sae_acts_pre", "hook_sae_acts_post")]
    return not any(getattr(p, "fwd_hooks", None) or getattr(p, "_forward_hooks", None) for p in points)


class _Columns:
    """The encoder columns of one SAE's watched features (copied once, contiguous)."""

    def __init__(self, sae, indices: list[int]):
        from sae_lens.saes.jumprelu_sae import JumpReLUSAE

        self.sae, self.indices = sae, indices
        self.exact = _columnwise(sae)
        if self.exact:
            idx = torch.tensor(indices, dtype=torch.long, device=sae.W_enc.device)
            with torch.inference_mode():
                self.w = sae.W_enc.detach().index_select(1, idx).contiguous()
                self.b = sae.b_enc.detach().index_select(0, idx)
                jump = type(sae).encode is JumpReLUSAE.encode
                self.theta = sae.threshold.detach().index_select(0, idx) if jump else None
        self.idx = torch.tensor(indices, dtype=torch.long)

    def values(self, acts: torch.Tensor) -> torch.Tensor:
        """``sae.encode(acts)[:, indices]`` for rows of hook activations ``acts`` [rows, d_in]."""
        sae = self.sae
        if not self.exact:
            full = sae.encode(acts)
            return full.index_select(-1, self.idx.to(full.device))
        pre = sae.process_sae_in(acts) @ self.w + self.b
        post = sae.activation_fn(pre)
        if self.theta is not None:
            post = post * (pre > self.theta).to(post.dtype)
        return post


class Watch:
    """What one run watches: for each of its SAEs (``saes``, primary first) the
    columns of its keys, and where each key's value goes in a step's ``watched``."""

    def __init__(self, saes: Sequence[Any], keys: Sequence[WatchKey]):
        self.saes = [_Sae.of(s) for s in saes]
        self.keys = tuple(keys)
        layered = len(self.saes) > 1
        self._parts: list[tuple[int, list[int], _Columns] | None] = []
        for n, s in enumerate(self.saes):  # canonical keys (resolve_watch): a layer in layered runs, else None
            slots = [j for j, (la, _) in enumerate(self.keys) if la == (s.layer if layered else None)]
            self._parts.append((n, slots, _Columns(s.sae, [self.keys[j][1] for j in slots])) if slots else None)
        covered = sorted(j for p in self._parts if p for j in p[1])
        if covered != list(range(len(self.keys))):
            raise ValueError(f"watch keys not of this run's SAEs: {self.keys}")

    def __bool__(self) -> bool:
        return bool(self.keys)

    @torch.inference_mode()
    def rows(self, acts_by_sae: Sequence[torch.Tensor]) -> list[tuple[float, ...]]:
        """Each row's watched values (in key order), from each SAE's hook activations
        ``acts_by_sae`` (in :attr:`saes` order, the same rows each)."""
        if not self.keys:
            return [()] * int(acts_by_sae[0].shape[0])
        n_rows = int(acts_by_sae[0].shape[0])
        out = torch.zeros(n_rows, len(self.keys), dtype=torch.float32)
        for part in self._parts:
            if part is None:
                continue
            n, slots, cols = part
            out[:, slots] = cols.values(acts_by_sae[n]).to(device="cpu", dtype=torch.float32)
        return [tuple(row) for row in out.tolist()]
