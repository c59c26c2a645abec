"""Steer by search: a feature found by its label, which never fired, steers a run.

The strength is in units of its typical maximum: Neuronpedia's
``maxActApprox`` where known, else √d_model / ‖W_dec[f]‖ (computed here from
the weights). References: the plain run's tokens, and the decoder row times the
coefficient, computed here (not by the product's steering code).
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import pytest
import torch

from axon_core.catalogue import load_catalogue
from axon_core.generation import GenerationSettings, generate
from axon_core.labels import LabelService
from axon_core.page import inspector
from axon_core.page.evidence import steer_unit
from axon_core.page.find import find
from axon_core.page.request import request_from_inputs
from axon_core.run_request import Limits
from axon_core.session import RunSession
from axon_core.steering import compare_runs, steering_edit
from neuronpedia_fake import FakeNeuronpedia
import polling

NP = "gpt2-small/8-res-jb"
RELEASE, SAE_ID = "gpt2-small-res-jb", "blocks.8.hook_resid_pre"
PROMPT = "The capital of France is"
SETTINGS = GenerationSettings(max_new_tokens=10, seed=2, stop_at_eos=False)
wait_for = functools.partial(polling.wait_for, timeout=10.0)


@pytest.fixture
def fake():
    with FakeNeuronpedia() as f:
        yield f


def plain_run(pair, svc):
    steps = list(generate(pair, PROMPT, SETTINGS))
    fired = {f.index for s in steps for f in s.features}
    never = next(i for i in range(pair.sae.W_dec.shape[0]) if i not in fired)
    svc.put(NP, {i: None for i in fired} | {never: "zebra crossings"})
    meta = {"model": "gpt2-small", "release": RELEASE, "sae_id": SAE_ID, "neuronpedia_id": NP, "prompt": PROMPT}
    run = RunSession(meta, SETTINGS, svc, frame_interval=0.0)
    for s in steps:
        run.add(s)
    return run, steps, never


@pytest.mark.parametrize("typical_max", [6.5, None], ids=["maxActApprox", "decoder-default"])
def test_a_never_fired_feature_found_by_search_steers_a_run(pair, fake, tmp_path, typical_max):
    svc = LabelService(base_url=fake.url, datasets_url=fake.datasets_url, cache_path=tmp_path / "l.sqlite",
                       rate_per_s=0)
    try:
        services = SimpleNamespace(labels=svc, catalogue=load_catalogue(), pairs=SimpleNamespace(get=lambda r, s: pair))
        run, plain, never = plain_run(pair, svc)
        if typical_max is not None:
            fake.labels[(NP, never)] = "zebra crossings"
            fake.feature_extra[(NP, never)] = {"maxActApprox": typical_max}
        else:
            fake.mode = "error"  # Neuronpedia says nothing: the decoder's default
        row = next(r for r in find(services, run, "zebra", ask=False).rows if r["feature"] == never)
        assert row["fired"] == "no"
        shown = [row["layer"], row["feature"], row["label"], row["fired"]]
        v = inspector.inspect_found(services, run, shown)
        assert wait_for(lambda: not svc.evidence.pending(NP, never))
        v = inspector.inspect_found(services, run, shown)  # what the inspector shows once the evidence is in
        w = pair.sae.W_dec[never].detach()
        unit = typical_max if typical_max is not None else math.sqrt(w.shape[0]) / float(w.norm())
        assert v.steer_feature == never and v.unit[0] == pytest.approx(unit, rel=1e-6)
        assert "has not fired in this run" in v.head and "Steering strength 1 =" in v.evidence
        assert ("maxActApprox 6.5" if typical_max else "√d_model / ‖W_dec[f]‖ = ") in v.evidence
        strength = 90.0 / unit  # well inside the steering box's ±100
        box, warning = inspector.add_steer(run, never, strength, "", v.unit)
        assert warning is None
        req, notices = request_from_inputs(Limits(), PROMPT, "gpt2-small", RELEASE, SAE_ID, 1.0, 50, 0.95, 1.0,
                                           10, 2, 12, 0.1, steer=box)
        assert not [n for n in notices if "steer" in n]
        (index, coef), = req.steer
        assert index == never and coef == pytest.approx(strength * unit, rel=1e-3)
        edit = steering_edit(pair.sae, req.steer)
        x = torch.randn(3, 7, w.shape[0])
        assert torch.allclose(edit(x) - x, (strength * unit * w).expand_as(x), rtol=1e-3, atol=1e-4)
        steered = list(generate(pair, PROMPT, SETTINGS, edit=edit))
        assert [s.token_id for s in steered if not s.is_prompt] != [s.token_id for s in plain if not s.is_prompt]
        assert compare_runs(plain, steered).first_divergence is not None
        assert any(f.index == never for s in steered for f in s.features)  # now it fires
    finally:
        svc.close()


def test_add_steer_warns_beyond_the_clamp(pair):
    box, warning = inspector.add_steer(None, 3, 10, "1:1", (27.7, "√d_model / ‖W_dec[f]‖ = 27.7"))
    assert box == "1:1, 3:277" and "clamps it to 100" in warning


def test_the_page_handlers_inspect_and_steer_a_found_feature(app_module, pair):
    """The app's own handlers: a search result that never fired opens in the inspector
    (evidence, the steering unit said) and *Add to steering* counts in that unit."""
    handlers = app_module.HANDLERS
    handlers.services.labels.put(NP, {77: "zebra crossings <b>x</b>"})
    evt = SimpleNamespace(row_value=[8, 77, "zebra crossings", "no", 0, 0, "cached"])
    head, plot, _, _, _, feature, evidence, pick, timer = handlers.inspect_from_found(None, RELEASE, SAE_ID, evt)
    assert feature == 77 and pick["index"] == 77 and "Logit lens · AXON" in evidence
    assert "Steering strength 1 =" in evidence and "&lt;b&gt;" in head
    unit = steer_unit(handlers.services, None, pick)[0]
    assert handlers.add_steer(None, 77, 2, "", pick) == f"77:{2 * unit:.4g}"
    shown, timer = handlers.refresh_evidence(pick)
    assert "Logit lens · AXON" in shown
