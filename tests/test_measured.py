"""The measured flavour (issue 23 item 2): each of a token's 8 strongest features
ablated in turn at the deciding position, against an ablation done here with
TransformerLens hooks on a full forward (the feature's a_f · W_dec[f] taken out
of the hook point at that position; everything else as run)."""

from __future__ import annotations

import types

import pytest
import torch

from axon_core.generation import GenerationSettings, generate
from axon_core.measured import measured_effects
from axon_core.residuals import FastWeights
from axon_core.steering import steering_edit

from steps_factory import generated_run, third_candidate

PROMPT = "The capital of France is"
SAMPLED = GenerationSettings(max_new_tokens=6, temperature=0.9, top_k=40, top_p=0.95, repetition_penalty=1.1,
                             seed=2, feature_k=10, activation_threshold=0.1, stop_at_eos=False)


def _reference(model, sae, hook_name, tokens, p, chosen, other, k=8, steer=None):
    """(features, Δ logit diff, Δ p(chosen)) by full forwards with hooks."""
    tokens = tokens[None]

    def base_hook(act, hook):
        return act + steer if steer is not None else act

    with torch.inference_mode():
        got = {}

        def grab(act, hook):
            got["x"] = act.clone()

        steered = [(hook_name, base_hook)] if steer is not None else []
        logits = model.run_with_hooks(tokens, fwd_hooks=steered + [(hook_name, grab)])
        x = got["x"][0, p]
        code = sae.encode(x[None])[0]
        top = code.topk(k)
        feats = [int(i) for i, v in zip(top.indices, top.values) if v > 0]

        def measure(lg):
            lg = lg[0, p].float()
            return float(lg[chosen] - lg[other]), float(lg.log_softmax(-1)[chosen].exp())

        d0, p0 = measure(logits)
        dd, dp = [], []
        for f in feats:
            def ablate(act, hook, f=f):
                act = act.clone()
                act[0, p] -= code[f] * sae.W_dec[f]
                return act
            d, pr = measure(model.run_with_hooks(tokens, fwd_hooks=steered + [(hook_name, ablate)]))
            dd.append(d - d0)
            dp.append(pr - p0)
    return feats, torch.tensor(dd), torch.tensor(dp), d0, p0


def _check(pair, steps, prepend_bos=True, fast=True, steer=None):
    model = pair.model
    ids = ([model.tokenizer.bos_token_id] if prepend_bos else []) + [s.token_id for s in steps]
    tokens = torch.tensor(ids)
    weights = pair.fast_weights if fast and FastWeights.supports(model) else None
    edit = steering_edit(pair.sae, steer) if steer else None
    vector = None if not steer else sum(c * pair.sae.W_dec[f] for f, c in steer).detach()
    decided = [s for s in steps if s.decision is not None and s.decision.runner_up is not None]
    for step in (decided[0], decided[-1]):  # the prompt's last position and a generated one
        p, d = step.position, step.decision
        m = measured_effects(model, pair.sae, pair.hook_name, tokens, p, d.chosen, d.runner_up.token_id,
                             weights=weights, edit=edit)
        feats, dd, dp, d0, p0 = _reference(model, pair.sae, pair.hook_name, tokens, p, d.chosen,
                                           d.runner_up.token_id, steer=vector)
        assert list(m.features) == feats and len(feats) > 0
        assert m.logit_diff == pytest.approx(d0, abs=1e-3) and m.prob == pytest.approx(p0, abs=1e-4)
        assert torch.allclose(torch.tensor(m.d_logit_diff), dd, atol=2e-4, rtol=1e-3), (m.d_logit_diff, dd)
        assert torch.allclose(torch.tensor(m.d_prob), dp, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("fast", [True, False])
def test_measured_effect_equals_an_ablation_with_hooks_on_a_full_forward(pair, fast):
    _check(pair, list(generate(pair, PROMPT, SAMPLED)), fast=fast)


def test_measured_effect_of_a_steered_run(pair):
    steer = ((3, 6.0),)
    edit = steering_edit(pair.sae, steer)
    _check(pair, list(generate(pair, PROMPT, SAMPLED, edit=edit)), steer=steer)


def test_measured_effect_on_pythia(pythia_hub):
    from axon_core.loading import PairCache

    pair = PairCache(device="cpu").get("pythia-70m-deduped-res-sm", "blocks.2.hook_resid_post")
    _check(pair, list(generate(pair, PROMPT, SAMPLED)), prepend_bos=False)


def test_strip_shows_the_measured_flavour_for_the_shown_token(pairs, pair):
    from axon_core.page.view import measured_for_token

    run, steps = generated_run(pair, PROMPT, SAMPLED)
    shown, before = steps[-2], steps[-3]
    run.scrub(shown.position)
    page = measured_for_token(types.SimpleNamespace(pairs=pairs), run)
    entry = run.measured[before.position][before.decision.runner_up.token_id]
    tokens = torch.tensor([pair.model.tokenizer.bos_token_id] + [s.token_id for s in steps])
    feats, dd, _, _, _ = _reference(pair.model, pair.sae, pair.hook_name, tokens, before.position,
                                    before.decision.chosen, before.decision.runner_up.token_id)
    assert [k for k, *_ in entry["rows"]] == feats
    assert torch.allclose(torch.tensor([r[1] for r in entry["rows"]]), dd, atol=2e-4, rtol=1e-3)
    assert 'class="dec-measured"' in page and "measured (each feature ablated" in page
    run.scrub(steps[-1].position)
    assert 'class="dec-measured"' not in run.text_html()


@pytest.mark.parametrize("fast", [True, False])
def test_measured_effect_against_the_candidate_clicked(pairs, pair, fast, monkeypatch):
    """The strip's compared candidate ("position:token_id"): the ablations measure the
    chosen token against it, as the hooks' full forward does with that candidate."""
    from axon_core.page import view

    if not fast:  # TransformerLens's forward (any family) rather than GPT-2's fast stepper
        monkeypatch.setattr(view.FastWeights, "supports", staticmethod(lambda model: False))
    run, steps = generated_run(pair, PROMPT, SAMPLED)
    shown, before = steps[-2], steps[-3]
    d = before.decision
    j, other = third_candidate(d)
    run.scrub(shown.position)
    page = view.measured_for_token(types.SimpleNamespace(pairs=pairs), run, f"{shown.position}:{other}:5")
    entry = run.measured[before.position][other]
    tokens = torch.tensor([pair.model.tokenizer.bos_token_id] + [s.token_id for s in steps])
    feats, dd, dp, d0, p0 = _reference(pair.model, pair.sae, pair.hook_name, tokens, before.position, d.chosen, other)
    assert entry["other"] == other and [k for k, *_ in entry["rows"]] == feats
    assert entry["logit_diff"] == pytest.approx(d0, abs=1e-3) and entry["prob"] == pytest.approx(p0, abs=1e-4)
    assert torch.allclose(torch.tensor([r[1] for r in entry["rows"]]), dd, atol=2e-4, rtol=1e-3)
    assert torch.allclose(torch.tensor([r[2] for r in entry["rows"]]), dp, atol=1e-5, rtol=1e-3)
    # shown in that candidate's block (hidden until it is the one compared), not the runner-up's
    at = page.index(f'<div class="dec-push off" data-j="{j}" data-push=')
    nxt = page.find('<div class="dec-push', at + 10)
    assert 'class="dec-measured"' in page[at:nxt if nxt > 0 else None]
    assert page.count('class="dec-measured"') == 1
    # and the runner-up's, asked for next, sits beside it: both kept
    view.measured_for_token(types.SimpleNamespace(pairs=pairs), run)
    assert set(run.measured[before.position]) == {other, d.runner_up.token_id}
    assert run.text_html().count('class="dec-measured"') == 2
