"""Hand-built TokenSteps for the graph / layout / figure / export tests, and a
generated run held in a RunSession for the strip's tests (decision, measured).

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


# what the strip's tests open their RunSession with (release and hook point of the test pair)
STRIP_META = {"release": "gpt2-small-res-jb", "sae_id": "blocks.8.hook_resid_pre", "neuronpedia_id": None}


def generated_run(pair, prompt: str, settings):
    """A run of ``pair`` from ``prompt`` (``generate``), every step added to a
    RunSession as a page view holds it: ``(run, steps)``."""
    from axon_core.generation import generate
    from axon_core.session import RunSession

    run = RunSession(STRIP_META, settings, None, frame_interval=0.0)
    steps = list(generate(pair, prompt, settings))
    for s in steps:
        run.add(s)
    return run, steps


def other_candidate(steps, position: int) -> int:
    """A candidate not chosen at ``position`` (from the decision at position − 1): what a fork forces."""
    before = next(s for s in steps if s.position == position - 1)
    return next(c.token_id for c in before.decision.candidates if not c.chosen)


def third_candidate(decision) -> tuple[int, int]:
    """``(j, token_id)`` of the first candidate that is neither chosen nor the runner-up:
    what a person clicks to compare against another than the default."""
    j = next(k for k, c in enumerate(decision.candidates)
             if not c.chosen and c.token_id != decision.runner_up.token_id)
    return j, decision.candidates[j].token_id
