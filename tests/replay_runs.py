"""Runs for the replay tests, viewed through a real RunSession as the app's live view does.

    run, d = live_run(40)        # a RunSession after 40 tokens, and its export (a run JSON dict)
    run.scrub(12); run.figure(relayout=False)   # what the live view shows scrubbed to token 12
"""

from __future__ import annotations

import dataclasses

import orjson

from axon_core.export import run_to_json
from axon_core.features import FeatureHit
from axon_core.generation import GenerationSettings
from axon_core.graph import GraphState
from axon_core.session import RunSession
from steps_factory import random_steps

NP_ID = "gpt2-small/8-res-jb"
XSS = "</script><img src=x onerror=window.__xss=1>"
META = {"model": "gpt2-small", "release": "gpt2-small-res-jb", "sae_id": "blocks.8.hook_resid_pre",
        "neuronpedia_id": NP_ID, "prompt": "The capital <b>of</b> France </script> is"}


class Labels:
    """A label store as RunSession reads one (label / known / request / arrivals):
    every third feature's label is hostile markup, the rest plain words."""

    arrivals = 1

    def label(self, np_id, index):
        return XSS if index % 3 == 0 else f'concept "{index}" & co'

    def known(self, np_id, index):
        return self.label(np_id, index)

    def request(self, np_id, indices):
        pass


def live_run(n_tokens: int = 40, frame_every: int = 3, seed: int = 0, n_features: int = 500, k: int = 12):
    """A RunSession fed ``n_tokens`` steps, drawing a frame every ``frame_every`` tokens
    and a final one (as the app's live loop does), and its export round-tripped through JSON."""
    steps = random_steps(n_tokens, n_features=n_features, k=k, seed=seed)
    steps[3] = dataclasses.replace(steps[3], text="</script><img src=x onerror=window.__xss=2>")
    steps[7] = dataclasses.replace(steps[7], text="\nline two")
    run = RunSession(META, GenerationSettings(seed=seed), Labels())
    for i, s in enumerate(steps):
        run.add(s)
        if i % frame_every == 0:
            run.figure()
    run.figure()
    return run, orjson.loads(orjson.dumps(run.export_json({"axon": "test"})))


def layered_run(n_tokens: int = 30, seed: int = 1) -> dict:
    """A run JSON of two SAEs (layers 5 and 8), written by run_to_json as a layered run is."""
    steps = []
    for s in random_steps(n_tokens, n_features=200, k=8, seed=seed):
        feats = tuple(FeatureHit(f.index, f.activation, f.attribution, 5 if f.index % 2 else 8) for f in s.features)
        steps.append(dataclasses.replace(s, features=feats))
    graph = GraphState()
    for s in steps:
        graph.add_step(s)
    saes = [{"release": "gpt2-small-res-jb", "sae_id": f"blocks.{la}.hook_resid_pre",
             "hook_name": f"blocks.{la}.hook_resid_pre", "layer": la, "neuronpedia_id": f"gpt2-small/{la}-res-jb"}
            for la in (8, 5)]
    d = run_to_json(steps, GenerationSettings(seed=seed), {**META, "ms_per_token": 50.0}, graph,
                    lambda i: f"label {i}", saes=saes)
    return orjson.loads(orjson.dumps(d))
