"""Steering: add features' decoder directions to the residual while the model writes.

A steering spec is a tuple of (feature index, coefficient). On every token —
prompt included — the activation at the SAE's hook point becomes

    x' = x + Σ_f  c_f · W_dec[f]

so the model reads a residual that "contains" feature f with c_f more units of
activation, and everything downstream (later layers, the logits, the SAE's own
encoding of x') follows. Coefficients are in the feature's activation units;
the app offers them as a multiple of the feature's peak activation in the
unsteered run. A coefficient of 0 changes nothing.

Worked example::

    spec = ((7124, 8.0),)                      # push feature 7124 by 8 units
    edit = steering_edit(pair.sae, spec)
    steered = list(generate(pair, prompt, settings, edit=edit))
    compare_runs(plain, steered).first_divergence   # position of the first differing token
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Steer = tuple[tuple[int, float], ...]


def steering_vector(sae, spec: Steer) -> torch.Tensor | None:
    """Σ c_f · W_dec[f] for the spec, or None when nothing is to be added."""
    spec = tuple((int(f), float(c)) for f, c in spec if float(c) != 0.0)
    if not spec:
        return None
    d_sae = sae.W_dec.shape[0]
    bad = [f for f, _ in spec if not 0 <= f < d_sae]
    if bad:
        raise ValueError(f"feature {bad[0]} is not in this SAE (it has {d_sae} features)")
    with torch.no_grad():
        idx = torch.tensor([f for f, _ in spec], device=sae.W_dec.device)
        coef = torch.tensor([c for _, c in spec], dtype=sae.W_dec.dtype, device=sae.W_dec.device)
        return (coef[:, None] * sae.W_dec[idx]).sum(0).detach()


def steering_edit(sae, spec: Steer):
    """An ``edit`` for :func:`~axon_core.generation.generate` that adds the
    steering vector at the hook point, or None for an empty/zero spec."""
    vector = steering_vector(sae, spec)
    if vector is None:
        return None
    if sae.W_dec.shape[-1] != vector.shape[-1]:  # pragma: no cover - shapes come from one SAE
        raise ValueError("steering vector does not match the hook's width")

    def edit(acts: torch.Tensor) -> torch.Tensor:
        if acts.shape[-1] != vector.shape[-1]:
            raise ValueError("steering needs an SAE that reads the residual stream (not hook_z)")
        return acts + vector

    return edit


@dataclass(frozen=True)
class Comparison:
    """How a steered run differs from the plain one."""

    first_divergence: int | None  # position of the first differing token (None: identical)
    gained: tuple[tuple[int, float], ...]  # features much stronger when steered: (key, Δpeak); key: FeatureHit.key
    lost: tuple[tuple[int, float], ...]  # features much weaker when steered: (index, Δpeak)
    shared_tokens: int  # tokens identical before the divergence (generated ones)


def _peaks(steps) -> dict[int, float]:
    peaks: dict[int, float] = {}
    for s in steps:
        for f in s.features:
            peaks[f.key] = max(peaks.get(f.key, 0.0), f.activation)
    return peaks


def compare_runs(plain, steered, n: int = 8) -> Comparison:
    """First diverging token and the features whose peak changed most."""
    first, shared = None, 0
    for a, b in zip(plain, steered):
        if a.token_id != b.token_id:
            first = a.position
            break
        shared += not a.is_prompt
    else:
        if len(plain) != len(steered):
            first = min(len(plain), len(steered))
            first = (plain if len(plain) > len(steered) else steered)[first].position
    pa, pb = _peaks(plain), _peaks(steered)
    delta = {i: pb.get(i, 0.0) - pa.get(i, 0.0) for i in set(pa) | set(pb)}
    ranked = sorted(delta.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
    gained = tuple((i, d) for i, d in ranked if d > 0)[:n]
    lost = tuple((i, d) for i, d in ranked if d < 0)[:n]
    return Comparison(first, gained, lost, shared)
