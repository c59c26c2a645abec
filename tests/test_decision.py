"""The decision at every token, against references that share nothing with axon_core.decision:

- candidates and their probabilities: a plain TransformerLens forward's
  ``log_softmax`` at each position; the sampling distribution: Hugging Face's
  own logits processors (repetition penalty, temperature, top-k, top-p);
- how much the SAE explains: ``sae.decode(sae.encode(x))`` of the residual from
  ``run_with_cache``, for one SAE and several layers read at once;
- what tipped it (direct path): ``ActivationCache.logit_attrs`` of each
  feature's decoder contribution with ``tokens=chosen, incorrect_tokens=other``.
"""

from __future__ import annotations

import orjson
import pytest
import torch

from axon_core.decision import LOW_FVE, Fit
from axon_core.export import run_from_json, run_to_json
from axon_core.generation import GenerationSettings, generate
from axon_core.graph import GraphState

from steps_factory import generated_run, third_candidate

PROMPT = "The capital of France is"
SAMPLED = GenerationSettings(max_new_tokens=8, temperature=0.8, top_k=40, top_p=0.9, repetition_penalty=1.3,
                             seed=5, feature_k=10, activation_threshold=0.1, stop_at_eos=False)
GREEDY = GenerationSettings(max_new_tokens=6, temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0,
                            seed=0, feature_k=10, activation_threshold=0.1, stop_at_eos=False)


def _forward(pair, steps, prepend_bos=True):
    model = pair.model
    bos = [model.tokenizer.bos_token_id] if prepend_bos else []
    tokens = torch.tensor([bos + [s.token_id for s in steps]])
    with torch.inference_mode():
        logits, cache = model.run_with_cache(tokens)
    return tokens, logits, cache


def _hf_sampling_probs(logits_row, history, s: GenerationSettings) -> torch.Tensor:
    """The distribution Hugging Face's generate would sample from, over the vocabulary."""
    from transformers import (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
                              TopPLogitsWarper)

    ids = torch.tensor([history])
    scores = logits_row[None].float().clone()
    scores = RepetitionPenaltyLogitsProcessor(s.repetition_penalty)(ids, scores)
    scores = TemperatureLogitsWarper(s.temperature)(ids, scores)
    if s.top_k:
        scores = TopKLogitsWarper(s.top_k)(ids, scores)
    scores = TopPLogitsWarper(s.top_p)(ids, scores)
    return scores.softmax(-1)[0]


def _check_candidates(pair, steps, settings, prepend_bos=True):
    tokens, logits, _ = _forward(pair, steps, prepend_bos)
    decided = [s for s in steps if s.decision is not None]
    # the last prompt token (it chose the first new one) and every new token but the last
    assert [s.position for s in decided] == list(range(tokens.shape[1] - settings.max_new_tokens - 1,
                                                       tokens.shape[1] - 1))
    for step in decided:
        p, d = step.position, step.decision
        logp = logits[0, p].float().log_softmax(-1)
        chosen = int(tokens[0, p + 1])
        assert d.chosen == chosen == step.next_token_id
        assert [c.chosen for c in d.candidates].count(True) == 1
        assert next(c for c in d.candidates if c.chosen).token_id == chosen
        top5 = [c for c in d.candidates[:5]]
        fifth = float(logp.topk(5).values[-1])
        for c in d.candidates:
            assert c.prob == pytest.approx(float(logp[c.token_id].exp()), abs=1e-4)
        # the first five are the model's five most likely, strongest first (ties within float noise)
        assert all(float(logp[c.token_id]) >= fifth - 1e-4 for c in top5)
        assert all(a.prob >= b.prob - 1e-6 for a, b in zip(top5, top5[1:]))
        assert len(d.candidates) == 5 + (chosen not in [c.token_id for c in top5])
        if settings.temperature == 0:
            assert [c.sampled_prob for c in d.candidates] == [1.0 if c.chosen else 0.0 for c in d.candidates]
        else:
            history = tokens[0, : p + 1].tolist()
            ref = _hf_sampling_probs(logits[0, p], history, settings)
            for c in d.candidates:
                assert c.sampled_prob == pytest.approx(float(ref[c.token_id]), abs=1e-4), (p, c)
            assert next(c for c in d.candidates if c.chosen).sampled_prob == pytest.approx(
                step_after(steps, step).sampled_prob, abs=1e-6)
    return decided


def step_after(steps, step):
    return next(s for s in steps if s.position == step.position + 1)


@pytest.mark.parametrize("settings", [SAMPLED, GREEDY], ids=["sampled", "greedy"])
def test_candidates_equal_a_plain_forwards_log_softmax(pair, settings):
    steps = list(generate(pair, PROMPT, settings))
    decided = _check_candidates(pair, steps, settings)
    assert any(s.decision.candidates[0].prob > 0 for s in decided)
    # the run JSON carries them (and reads back to the same steps)
    d = orjson.loads(orjson.dumps(run_to_json(steps, settings, {}, GraphState(), lambda i: "")))
    tok = next(t for t in d["tokens"] if "decision" in t)
    assert tok["decision"]["flavour"] == "direct"
    assert len(tok["decision"]["candidates"]) >= 5 and "fit" in tok
    assert run_from_json(d)[0] == steps


@pytest.fixture(scope="module")
def pythia_pair(pythia_hub):
    from axon_core.loading import PairCache

    return PairCache(device="cpu").get("pythia-70m-deduped-res-sm", "blocks.2.hook_resid_post")


def test_candidates_on_pythia(pythia_pair):
    from axon_core.architectures import FamilyWeights

    pair = pythia_pair
    assert isinstance(pair.fast_weights, FamilyWeights)
    steps = list(generate(pair, PROMPT, SAMPLED))
    _check_candidates(pair, steps, SAMPLED, prepend_bos=False)
    _check_direct_path(pair, steps, prepend_bos=False)


def _reference_fit(sae, x):
    with torch.inference_mode():
        acts = sae.encode(x[None])
        recon = sae.decode(acts)[0]
    fve = 1 - float((x - recon).pow(2).sum()) / float((x - x.mean()).pow(2).sum())
    return fve, int((acts > 0).sum())


def test_variance_explained_equals_decode_of_encode(pair):
    steps = list(generate(pair, PROMPT, SAMPLED))
    _, _, cache = _forward(pair, steps)
    for step in steps:
        assert len(step.fit) == 1 and step.fit[0].layer is None
        fve, l0 = _reference_fit(pair.sae, cache[pair.hook_name][0, step.position])
        assert step.fit[0].l0 == l0 > 0
        assert step.fit[0].fve == pytest.approx(fve, rel=1e-4, abs=1e-4)


def test_variance_explained_per_layer(pairs, pair):
    extra = [pairs.get("gpt2-small-res-jb", f"blocks.{la}.hook_resid_pre") for la in (2, 11)]
    steps = list(generate(pair, PROMPT, GREEDY, extra=extra))
    _, _, cache = _forward(pair, steps)
    for step in steps:
        assert [f.layer for f in step.fit] == [8, 2, 11]
        for fit, p in zip(step.fit, [pair, *extra]):
            fve, l0 = _reference_fit(p.sae, cache[p.hook_name][0, step.position])
            assert fit.l0 == l0
            assert fit.fve == pytest.approx(fve, rel=1e-4, abs=1e-4)


def test_low_fit_is_flagged():
    assert Fit(LOW_FVE - 0.01, 10).low and not Fit(0.9, 10).low


def _check_direct_path(pair, steps, prepend_bos=True):
    tokens, _, cache = _forward(pair, steps, prepend_bos)
    w_dec = pair.sae.W_dec.detach()
    with torch.inference_mode():
        acts = pair.sae.encode(cache[pair.hook_name][0])
    checked = 0
    for step in steps:
        d = step.decision
        if d is None or not step.features:
            continue
        p = step.position
        idx = torch.tensor([f.index for f in step.features])
        stack = (acts[p, idx, None] * w_dec[idx])[:, None, :]
        keys = [f.key for f in step.features]
        for other in (d.runner_up.token_id, d.candidates[-1].token_id):
            if other == d.chosen:
                continue
            with torch.inference_mode():
                ref = cache.logit_attrs(stack, tokens=d.chosen, incorrect_tokens=other, pos_slice=p)[:, 0]
            got = torch.tensor([v for _, v in d.pushes(keys, other if other != d.runner_up.token_id else None)])
            assert torch.allclose(got, ref.float(), atol=1e-4, rtol=1e-4), (p, got, ref)
            checked += 1
        assert d.runner_up.token_id != d.chosen
    assert checked >= 4


def test_direct_path_equals_logit_attrs_of_chosen_minus_other(pair):
    steps = list(generate(pair, PROMPT, SAMPLED))
    _check_direct_path(pair, steps)


def test_no_decisions_when_switched_off(pair):
    from axon_core.generation import Generation

    g = Generation(pair, PROMPT, GREEDY, decisions=False)
    steps = g.start()
    while not g.done:
        steps.append(g.step())
    assert all(s.decision is None and s.fit == () for s in steps)
    plain = list(generate(pair, PROMPT, GREEDY))
    assert [s.token_id for s in steps] == [s.token_id for s in plain]
    for a, b in zip(steps, plain):  # the same features and attributions (to float rounding)
        assert [(f.index, f.activation) for f in a.features] == [(f.index, f.activation) for f in b.features]
        assert [f.attribution for f in a.features] == pytest.approx([f.attribution for f in b.features], abs=1e-5)


def test_strip_and_hover_show_the_decision_and_stay_inert(pair, tmp_path):
    from axon_core.labels import LabelService
    from axon_core.session import RunSession

    xss = "<img src=x onerror=alert(1)>"
    svc = LabelService(enabled=False, cache_path=tmp_path / "l.sqlite")
    np_id = "gpt2-small/8-res-jb"
    run = RunSession({"neuronpedia_id": np_id}, SAMPLED, svc, frame_interval=0.0)
    steps = list(generate(pair, PROMPT, SAMPLED))
    svc.put(np_id, {f.index: xss for s in steps for f in s.features})
    for s in steps:
        run.add(s)
    page = run.text_html()
    strip = page[page.index('<div class="axon-decision"'):]
    newest, before = steps[-1], steps[-2]
    assert f'data-pos="{newest.position}"' in strip
    assert strip.count('class="axon-cand') == len(before.decision.candidates) >= 5
    assert strip.count("axon-cand chosen") == 1 and "direct path" in strip
    assert "SAE explains" in strip and xss not in page and "&lt;img" in strip
    # pushers: one block per other candidate, the runner-up's shown
    assert strip.count('class="dec-push"') == 1 and strip.count('class="dec-push off"') == len(before.decision.candidates) - 2
    # the hover of a generated token says what it was chosen among
    assert "chosen among" in page and "SAE explains" in page
    run.scrub(steps[2].position)  # a prompt token: nothing was chosen
    assert "given, not chosen" in run.text_html()
    first_new = next(s for s in steps if not s.is_prompt)
    run.scrub(first_new.position)  # chosen by the last prompt token's decision
    assert f'data-pos="{first_new.position}"' in run.text_html() and "Why" in run.text_html()


def _reference_gradient(model, sae, hook_name, tokens, p, feats, chosen, other):
    """a_f · W_dec[f] · ∂(logit_c − logit_o)/∂x_p: the gradient with respect to the
    residual at the hook, at position p only, through a plain forward (chain rule
    through the SAE's linear decoder)."""
    held = {}

    def leaf(x, hook):
        xp = x[0, p].detach().requires_grad_(True)
        held["x"] = xp
        x = x.clone()
        x[0, p] = xp
        return x

    with torch.enable_grad():
        logits = model.run_with_hooks(tokens[None, : p + 1], fwd_hooks=[(hook_name, leaf)])
        (g,) = torch.autograd.grad(logits[0, p, chosen] - logits[0, p, other], held["x"])
    idx = torch.tensor(feats)
    with torch.inference_mode():
        a = sae.encode(held["x"].detach()[None])[0]
    return a[idx] * (sae.W_dec.detach()[idx] @ g)


def _check_gradient(pair, steps, prepend_bos=True, fast=False):
    from axon_core.decision import gradient_pushes
    from axon_core.measured import gradient_pushes_fast

    model = pair.model
    bos = [model.tokenizer.bos_token_id] if prepend_bos else []
    tokens = torch.tensor(bos + [s.token_id for s in steps])
    first_new = next(s for s in steps if not s.is_prompt)
    checked = 0
    for step in (steps[1], first_new, steps[-2]):  # a prompt position and two generated ones
        feats = [f.index for f in step.features]
        p, chosen = step.position, int(tokens[step.position + 1])
        other = (chosen + 7) % model.cfg.d_vocab
        if fast:  # the fast stepper's prefix and its resume from the hook point (GPT-2)
            got = torch.tensor(gradient_pushes_fast(pair.fast_weights, model, pair.sae, pair.hook_name, tokens, p,
                                                    feats, chosen, other))
        else:
            got = torch.tensor(gradient_pushes(model, pair.sae, pair.hook_name, tokens, p, feats, chosen, other))
        ref = _reference_gradient(model, pair.sae, pair.hook_name, tokens, p, feats, chosen, other)
        assert torch.allclose(got, ref.float(), atol=1e-4, rtol=1e-3), (p, got, ref)
        checked += int(ref.abs().max() > 1e-3)
    assert checked >= 2  # not all ~0


def test_gradient_flavour_equals_autograd_through_a_plain_forward(pair):
    steps = list(generate(pair, PROMPT, SAMPLED))
    _check_gradient(pair, steps)


def test_gradient_flavour_through_the_fast_stepper_equals_autograd_through_a_plain_forward(pair):
    from axon_core.residuals import FastWeights

    assert FastWeights.supports(pair.model)
    _check_gradient(pair, list(generate(pair, PROMPT, SAMPLED)), fast=True)


def test_gradient_flavour_on_pythia(pythia_pair):
    pair = pythia_pair
    steps = list(generate(pair, PROMPT, SAMPLED))
    _check_gradient(pair, steps, prepend_bos=False)


def test_strip_adds_the_gradient_flavour_for_the_shown_token(pairs, pair):
    import types

    from axon_core.page.view import gradient_for_token

    run, steps = generated_run(pair, PROMPT, SAMPLED)
    shown = steps[-3]
    run.scrub(shown.position)
    page = gradient_for_token(types.SimpleNamespace(pairs=pairs), run)
    before = steps[-4]
    entry = run.gradients[before.position][before.decision.runner_up.token_id]
    assert entry["other"] == before.decision.runner_up.token_id
    # the same numbers as the reference above, for the features of the deciding position
    tokens = torch.tensor([pair.model.tokenizer.bos_token_id] + [s.token_id for s in steps])
    ref = _reference_gradient(pair.model, pair.sae, pair.hook_name, tokens, before.position,
                              [f.index for f in before.features], before.decision.chosen, entry["other"])
    assert torch.allclose(torch.tensor([v for _, v in entry["pushes"]]), ref.float(), atol=1e-4, rtol=1e-3)
    assert "through the later layers" in page and 'class="dec-grad"' in page
    run.scrub(steps[-1].position)  # another token: its strip has no gradient block until asked
    assert 'class="dec-grad"' not in run.text_html()


def test_strip_compares_with_the_candidate_clicked(pairs, pair):
    """A click on a candidate in the strip ("position:token_id", assets/notes.js): its block
    lists the direct path against it (TransformerLens's ``cache.logit_attrs`` with
    ``incorrect_tokens`` that candidate), and the gradient flavour is computed against it
    (autograd through a plain forward) and shown in that candidate's block."""
    import re
    import types

    from axon_core.page.view import compared, gradient_for_token

    run, steps = generated_run(pair, PROMPT, SAMPLED)
    shown, before = steps[-3], steps[-4]
    d = before.decision
    j, other = third_candidate(d)
    run.scrub(shown.position)
    spec = f"{shown.position}:{other}"
    assert compared(d, shown.position, spec) == other
    for stale in (None, "", f"{shown.position - 1}:{other}", f"{shown.position}:{d.chosen}", f"{shown.position}:7",
                  "x:y"):  # another token's click, the chosen one, not a candidate: the runner-up
        assert compared(d, shown.position, stale) == d.runner_up.token_id
    page = gradient_for_token(types.SimpleNamespace(pairs=pairs), run, spec)
    entry = run.gradients[before.position][other]
    assert entry["other"] == other and d.runner_up.token_id not in run.gradients[before.position]
    tokens, _, cache = _forward(pair, steps)
    feats = [f.index for f in before.features]
    ref = _reference_gradient(pair.model, pair.sae, pair.hook_name, tokens[0], before.position, feats, d.chosen, other)
    assert torch.allclose(torch.tensor([v for _, v in entry["pushes"]]), ref.float(), atol=1e-4, rtol=1e-3)
    # the strip: the gradient block sits in that candidate's block, which lists the direct path against it
    block = page[page.index(f'<div class="dec-push off" data-j="{j}" data-push='):]
    block = block[:block.index('<div class="dec-push', 10) if '<div class="dec-push' in block[10:] else None]
    assert 'class="dec-grad"' in block and "through the later layers" in block
    assert block.count('class="dec-grad"') == page.count('class="dec-grad"') == 1
    with torch.inference_mode():
        acts = pair.sae.encode(cache[pair.hook_name][0, before.position])
        idx = torch.tensor(feats)
        stack = (acts[idx, None] * pair.sae.W_dec.detach()[idx])[:, None, None, :]
        direct = cache.logit_attrs(stack[:, :, 0], tokens=d.chosen, incorrect_tokens=other,
                                   pos_slice=before.position)[:, 0]
    direct_part = block[:block.index('class="dec-grad"')]
    listed = [(int(k), float(v)) for k, v in re.findall(r'data-key="(\d+)"[^<]*<b>([+-][\d.]+)</b>', direct_part)]
    assert listed
    for k, v in listed:
        assert v == pytest.approx(float(direct[feats.index(k)]), abs=0.006)
    # every feature's push against it, for a graph to colour nodes by: keys are the graph's node keys
    import html as html_lib
    import json as json_lib

    attr = re.search(rf'<div class="dec-push off" data-j="{j}" data-push="([^"]*)"', page).group(1)
    push = {int(k): v for k, v in json_lib.loads(html_lib.unescape(attr)).items()}
    assert sorted(push) == sorted(f.key for f in before.features)
    for f in before.features:
        assert push[f.key] == pytest.approx(float(direct[feats.index(f.index)]), abs=2e-4)
    ranked = sorted(range(len(feats)), key=lambda i: -float(direct[i]))
    pro = [feats[i] for i in ranked if float(direct[i]) > 0][:4]
    assert [k for k, _ in listed][:len(pro)] == pro  # the strongest pushers for, first
