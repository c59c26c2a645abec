"""Hand-built TokenSteps for the graph / layout / figure / export tests.

    step(3, [(7, 2.0), (9, 1.0, 0.4)], next_token_id=11)
    # TokenStep(position=3, token_id=1003, text='t3', features=(FeatureHit(7, 2.0), FeatureHit(9, 1.0, 0.4)), ...)
"""

from __future__ import annotations

import numpy as np

from axon_core.features import FeatureHit
from axon_core.generation import TokenStep


def step(position: int, feats, *, next_token_id: int | None = None, is_prompt: bool = False,
         **kw) -> TokenStep:
    """A TokenStep at ``position`` whose features are (index, activation[, attribution])."""
    hits = tuple(FeatureHit(int(f[0]), float(f[1]), f[2] if len(f) > 2 else None) for f in feats)
    kw.setdefault("token_id", 1000 + position)
    kw.setdefault("text", f"t{position}")
    return TokenStep(position=position, is_prompt=is_prompt, features=hits,
                     next_token_id=next_token_id, **kw)


def random_steps(n_tokens: int, n_features: int = 400, k: int = 12, seed: int = 0) -> list[TokenStep]:
    """``n_tokens`` steps, each with ``k`` distinct random features."""
    rng = np.random.default_rng(seed)
    steps = []
    for p in range(1, n_tokens + 1):
        idx = rng.choice(n_features, size=k, replace=False)
        acts = rng.uniform(0.1, 8.0, size=k)
        attrs = rng.normal(0.0, 0.5, size=k)
        steps.append(step(p, [(int(i), float(a), float(t)) for i, a, t in zip(idx, acts, attrs)],
                          next_token_id=int(rng.integers(50257)), is_prompt=p <= 5))
    return steps
