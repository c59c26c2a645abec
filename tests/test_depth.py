"""Depth (issue 12): several SAEs read in one forward, virtual weights, and the
causal check by ablation, against plain TransformerLens + SAELens calls."""

from __future__ import annotations

import copy
import dataclasses

import orjson
import pytest
import torch

from axon_core import depth
from axon_core.batching import step_batch
from axon_core.depth import causal_check, run_tokens, virtual_edges, virtual_weights
from axon_core.export import run_from_json, run_to_json
from axon_core.features import FeatureHit
from axon_core.generation import Generation, GenerationSettings, LayerSae, TokenStep, generate
from axon_core.graph import GraphState
from axon_core.residuals import FastStepper, TransformerLensStepper
from reference import Reference, check_steps, rows_of_steps

PROMPT = "The capital of France is"
SETTINGS = GenerationSettings(max_new_tokens=8, temperature=1.0, top_k=0, top_p=1.0,
                              repetition_penalty=1.0, seed=5, feature_k=8, activation_threshold=0.1,
                              stop_at_eos=False)
LAYERS = (2, 5, 8, 11)


@pytest.fixture(scope="module")
def layer_pairs(offline_hub):
    """gpt2 + gpt2-small-res-jb at blocks 2, 5, 8, 11 (resid_pre), one model, by their real names."""
    from axon_core.loading import PairCache

    _write_missing_saes(offline_hub)
    cache = PairCache(max_saes=len(LAYERS), device="cpu")
    return {layer: cache.get("gpt2-small-res-jb", f"blocks.{layer}.hook_resid_pre") for layer in LAYERS}


def _write_missing_saes(hub) -> None:
    """A hub reused through AXON_TEST_HUB may predate blocks 5 and 11: add them."""
    import json

    from scripts.offline_hub import MODEL_REPO, SAE_REPO, SIZES, _snapshot, write_sae

    missing = [i for i in LAYERS if not (_snapshot(hub, SAE_REPO) / f"blocks.{i}.hook_resid_pre").exists()]
    if missing:
        from transformers import GPT2LMHeadModel

        size = SIZES[json.loads((hub / "AXON_OFFLINE_HUB.json").read_text())["size"]]
        model = GPT2LMHeadModel.from_pretrained(_snapshot(hub, MODEL_REPO)).eval()
        for i in missing:
            write_sae(hub, model, size, f"blocks.{i}.hook_resid_pre", i)


def _run(pairs, primary=8, extra=(2, 5, 11), settings=SETTINGS):
    g = Generation(pairs[primary], PROMPT, settings, extra=[pairs[i] for i in extra])
    steps = g.start()
    while not g.done:
        steps.append(g.step())
    return g, steps


# ------------------------------------------------------------------ several SAEs, one forward


def test_every_layer_matches_run_with_cache_and_encode(layer_pairs):
    """Every SAE's features and attributions at every position against
    tests/reference.py (one run_with_cache, each SAE's encode, logit_attrs)."""
    g, steps = _run(layer_pairs)
    model = layer_pairs[8].model
    assert [s.layer for s in g.saes] == [8, 2, 5, 11] and g.layered
    assert len(steps) == 5 + SETTINGS.max_new_tokens and any(not s.is_prompt for s in steps)
    tokens = run_tokens(steps, model.tokenizer.bos_token_id)
    ref = Reference.run(model, tokens, {s.layer: (s.hook_name, s.sae) for s in g.saes})
    for step in steps:
        layers_in_order = [f.layer for f in step.features]
        assert layers_in_order == sorted(layers_in_order, key=[8, 2, 5, 11].index)  # primary first
    counts = check_steps(ref, rows_of_steps(steps), SETTINGS.feature_k, SETTINGS.activation_threshold)
    fired = counts["features"]
    assert all(n > 2 * len(steps) for n in fired.values()), fired  # every layer's SAE fires
    assert counts["attributed"] > 8 * (len(steps) - 1) and counts["largest"] > 1e-2


def test_primary_hits_unchanged_and_single_sae_runs_untagged(layer_pairs):
    single = list(generate(layer_pairs[8], PROMPT, SETTINGS))
    assert all(f.layer is None for s in single for f in s.features)
    _, multi = _run(layer_pairs)
    assert [s.token_id for s in multi] == [s.token_id for s in single]  # same tokens
    for a, b in zip(single, multi):
        primary = tuple(dataclasses.replace(f, layer=None) for f in b.features if f.layer == 8)
        assert len(primary) == len(a.features)
        for x, y in zip(a.features, primary):
            assert x.index == y.index and abs(x.activation - y.activation) <= 1e-5


def test_one_forward_per_token_for_all_layers(layer_pairs):
    pair = layer_pairs[8]
    g = Generation(pair, PROMPT, SETTINGS, extra=[layer_pairs[i] for i in (2, 5, 11)])
    assert isinstance(g.stepper, FastStepper)
    calls = []
    inner = g.stepper.step

    def counted(tokens):
        calls.append(int(tokens.shape[0]))
        return inner(tokens)

    g.stepper.step = counted
    steps = g.start()
    while not g.done:
        steps.append(g.step())
    assert calls == [6] + [1] * SETTINGS.max_new_tokens  # the prompt pass, then one forward per token
    assert {f.layer for s in steps for f in s.features} == set(LAYERS)


def test_batched_steps_read_extra_hooks_too(layer_pairs):
    """Two runs through step_batch (one forward for both) equal each run alone, every layer."""
    pairs = layer_pairs
    alone = [_run(pairs, 8, (2, 5, 11))[1], _run(pairs, 5, (11,), dataclasses.replace(SETTINGS, seed=9))[1]]
    gens = [Generation(pairs[8], PROMPT, SETTINGS, extra=[pairs[i] for i in (2, 5, 11)]),
            Generation(pairs[5], PROMPT, dataclasses.replace(SETTINGS, seed=9), extra=[pairs[11]])]
    batched = [g.start() for g in gens]
    forwards = 0
    while not all(g.done for g in gens):
        live = [g for g in gens if not g.done]
        outs = step_batch([g.stepper for g in live], [g.next_input for g in live])
        forwards += 1
        assert set(outs[0].extra) == set(live[0].stepper.extra_hooks)
        for g, out in zip(live, outs):
            batched[gens.index(g)].append(g.advance(out))
    assert forwards == SETTINGS.max_new_tokens
    for a, b in zip(alone, batched):
        assert [s.token_id for s in a] == [s.token_id for s in b]
        for x, y in zip(a, b):
            assert [(f.layer, f.index) for f in x.features] == [(f.layer, f.index) for f in y.features]
            assert max(abs(f.activation - h.activation) for f, h in zip(x.features, y.features)) <= 1e-4


@pytest.mark.parametrize("kind", ["fast", "transformer_lens"])
def test_steppers_read_and_edit_extra_hooks(layer_pairs, kind):
    model = layer_pairs[8].model
    tokens = model.to_tokens(PROMPT)[0]
    hooks = ["blocks.2.hook_resid_pre", "blocks.5.hook_attn_out", "blocks.11.hook_resid_post"]

    def bump(x):
        return x + 0.5

    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens[None])
        got = {}

        def edit_hook(act, hook):
            return act + 0.5

        def grab(act, hook):
            got[hook.name] = act[0].clone()

        model.run_with_hooks(tokens[None], return_type=None, fwd_hooks=[
            ("blocks.2.hook_resid_pre", edit_hook), *[(h, grab) for h in hooks + ["blocks.8.hook_resid_pre"]]])
    edits = {"blocks.2.hook_resid_pre": bump}
    for edited in (False, True):
        kw = {"extra_hooks": hooks, "extra_edits": edits if edited else None}
        stepper = (FastStepper(layer_pairs[8].fast_weights, "blocks.8.hook_resid_pre", **kw) if kind == "fast"
                   else TransformerLensStepper(model, "blocks.8.hook_resid_pre", **kw))
        out = stepper.step(tokens)
        assert list(out.extra) == hooks
        ref = got if edited else {h: cache[h][0] for h in hooks + ["blocks.8.hook_resid_pre"]}
        for h in hooks:
            assert (out.extra[h] - ref[h]).abs().max() <= 1e-4, (h, edited)
        assert (out.acts - ref["blocks.8.hook_resid_pre"]).abs().max() <= 1e-4


def test_extra_saes_are_checked(layer_pairs):
    pair = layer_pairs[8]
    with pytest.raises(ValueError, match="one SAE per layer"):
        Generation(pair, PROMPT, SETTINGS, extra=[pair])
    other = dataclasses.replace(layer_pairs[2], model=object())
    with pytest.raises(ValueError, match="another model"):
        Generation(pair, PROMPT, SETTINGS, extra=[other])


# ------------------------------------------------------------------ virtual weights


def test_virtual_weights(layer_pairs):
    a, b = LayerSae.of(layer_pairs[2]), LayerSae.of(layer_pairs[8])
    src, tgt = [3, 17, 40], [0, 5, 9, 100]
    v = virtual_weights(a, b, src, tgt)
    w_dec, w_enc = a.sae.W_dec.detach(), b.sae.W_enc.detach()
    for i, f in enumerate(src):
        for j, g in enumerate(tgt):
            assert float(v[i, j]) == pytest.approx(float(w_dec[f] @ w_enc[:, g]), abs=1e-5)
    cut = float(v.abs().median())
    thresholded = virtual_weights(a, b, src, tgt, threshold=cut)
    assert torch.equal(thresholded != 0, v.abs() >= cut)
    edges = virtual_edges(a, b, src, tgt, threshold=cut)
    assert len(edges) == int((v.abs() >= cut).sum()) and abs(edges[0][2]) == float(v.abs().max())
    with pytest.raises(ValueError, match="before"):
        virtual_weights(b, a, [0], [0])


# ------------------------------------------------------------------ causal check


def _reference_ablation(model, tokens, p, source_hook, vector, target_saes):
    """TransformerLens run_with_hooks: subtract ``vector`` at ``source_hook``, position p only;
    each target SAE's code at p (vector None: nothing subtracted)."""
    got = {}

    def subtract(act, hook):
        act = act.clone()
        act[0, p] -= vector
        return act

    def grab(act, hook):
        got[hook.name] = act[0, p].clone()

    hooks = [(s.hook_name, grab) for s in target_saes]
    if vector is not None:
        hooks.insert(0, (source_hook, subtract))
    with torch.inference_mode():
        model.run_with_hooks(tokens[None, : p + 1], return_type=None, fwd_hooks=hooks)
        return {s.hook_name: s.sae.encode(got[s.hook_name][None])[0] for s in target_saes}


@pytest.fixture(scope="module")
def finished_run(layer_pairs):
    g, steps = _run(layer_pairs)
    return run_tokens(steps, layer_pairs[8].model.tokenizer.bos_token_id), steps


@pytest.fixture(scope="module")
def float64_copies(layer_pairs):
    """The model and the four SAEs in float64 (private copies)."""
    model = copy.deepcopy(layer_pairs[2].model).to(torch.float64)
    model.cfg.dtype = torch.float64
    return model, {i: LayerSae(copy.deepcopy(p.sae).to(dtype=torch.float64), p.hook_name)
                   for i, p in layer_pairs.items()}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("where", ["prompt", "generated"])
def test_causal_check_equals_run_with_hooks(layer_pairs, float64_copies, finished_run, where, dtype):
    """Each ablation against TransformerLens ``run_with_hooks`` subtracting a_f·W_dec[f] at
    the source hook, at position p only: to 1e-4 in float64. In float32 the fixture's
    scales add rounding (its residuals are ~0.1 in size while an ablation subtracts a
    vector of norm ~10-100, read by encoders of norm ~240): 1e-4 plus 1e-5 of the
    activation, float32's own precision over a few layers."""
    if dtype == "float64":
        model, saes = float64_copies
    else:
        model, saes = layer_pairs[2].model, {i: LayerSae.of(p) for i, p in layer_pairs.items()}
    tokens, steps = finished_run
    p = 4 if where == "prompt" else len(tokens) - 2
    src = saes[2]
    targets = [saes[i] for i in (5, 8, 11)]
    check = causal_check(model, tokens, p, src, targets, k=8)
    assert len(check.features) == 8 and check.source_layer == 2 and check.position == p
    # the ablated features are the run's own top layer-2 features at this token
    run_feats = [f.index for f in steps[p - 1].features if f.layer == 2]
    assert list(check.features) == run_feats[:8]
    base = _reference_ablation(model, tokens, p, src.hook_name, None, targets)
    w_dec = src.sae.W_dec.detach()
    biggest = 0.0
    for i, (f, a) in enumerate(zip(check.features, check.activations)):
        ablated = _reference_ablation(model, tokens, p, src.hook_name, a * w_dec[f], targets)
        for t in check.targets:
            idx = torch.tensor(t.features)
            expect = (ablated[t.hook_name] - base[t.hook_name])[idx]
            size = torch.maximum(ablated[t.hook_name][idx].abs(), base[t.hook_name][idx].abs())
            tolerance = 1e-4 + (1e-5 * size if dtype == "float32" else 0.0)
            assert ((t.delta[i] - expect).abs() <= tolerance).all(), (f, t.hook_name)
            assert max(abs(x - y) for x, y in zip(t.baseline, base[t.hook_name][idx].tolist())) <= 1e-4
            biggest = max(biggest, float(t.delta[i].abs().max()))
    assert biggest > 0.1  # the ablations did something measurable
    edges = check.edges(min_abs=0.05)
    assert edges and all(abs(e.delta) >= 0.05 for e in edges)
    assert all(e.source_layer == 2 and e.target_layer in (5, 8, 11) for e in edges)


@pytest.mark.parametrize("steered", [False, True])
def test_causal_check_transformer_lens_path_matches_fast_path(float64_copies, finished_run, monkeypatch, steered):
    """Models without the fast GPT-2 forward: TransformerLens on the prefix, batched (float64 here:
    see the tolerance note above); with edits (steering) before, between and after the SAEs too."""
    from axon_core.steering import steering_edit

    model, saes = float64_copies
    tokens, _ = finished_run
    src, targets = saes[2], [saes[i] for i in (5, 11)]
    edits = {f"blocks.{i}.hook_resid_pre": steering_edit(saes[i].sae, ((i, 0.3),)) for i in (2, 5, 8)} \
        if steered else None
    fast = causal_check(model, tokens, 6, src, targets, k=4, edits=edits)
    monkeypatch.setattr(depth.FastWeights, "supports", staticmethod(lambda m: False))
    slow = causal_check(model, tokens, 6, src, targets, k=4, edits=edits,
                        target_features={t.hook_name: list(f.features) for t, f in zip(targets, fast.targets)})
    if steered:
        plain = causal_check(model, tokens, 6, src, targets, k=4)
        assert plain.features != fast.features or plain.activations != pytest.approx(fast.activations)
    assert slow.features == fast.features
    for a, b in zip(fast.targets, slow.targets):
        assert a.features == b.features and (a.delta - b.delta).abs().max() <= 1e-4
        assert max(abs(x - y) for x, y in zip(a.baseline, b.baseline)) <= 1e-4


def _hand_built(pair, hook_name):
    """A private copy of ``pair``'s SAE, to edit, posing at ``hook_name``."""
    return LayerSae(copy.deepcopy(pair.sae), hook_name)


def test_orthogonal_feature_has_no_effect(layer_pairs, finished_run):
    """A decoder direction along (1, ..., 1): every block reads the residual through a
    LayerNorm that removes it, and the later SAEs' encoders are made orthogonal to it."""
    model = layer_pairs[2].model
    tokens, _ = finished_run
    d = model.cfg.d_model
    src = _hand_built(layer_pairs[2], "blocks.2.hook_resid_pre")
    with torch.no_grad():
        src.sae.W_enc[:, :2] = 0.0
        src.sae.b_enc[:2] = 3.0  # features 0 and 1 fire at 3.0 on every token
        src.sae.W_dec[0] = torch.ones(d) / d**0.5  # invisible downstream
        src.sae.W_dec[1] = layer_pairs[8].sae.W_enc[:, 0] / layer_pairs[8].sae.W_enc[:, 0].norm()  # control
    targets = []
    for i in (5, 8, 11):
        t = _hand_built(layer_pairs[i], f"blocks.{i}.hook_resid_pre")
        with torch.no_grad():
            t.sae.W_enc -= t.sae.W_enc.mean(0, keepdim=True)  # columns orthogonal to (1, ..., 1)
        targets.append(t)
    check = causal_check(model, tokens, 5, src, targets, features=[0, 1])
    assert check.activations == pytest.approx((3.0, 3.0))
    assert all(t.features for t in check.targets)
    assert max(float(t.delta[0].abs().max()) for t in check.targets) <= 1e-4  # ~0: orthogonal
    assert max(float(t.delta[1].abs().max()) for t in check.targets) > 0.1  # the control is not


@pytest.mark.parametrize("case", ["adjacent", "through_blocks"])
def test_feature_equal_to_a_later_encoder_direction(layer_pairs, finished_run, case):
    """Feature f at the source writes exactly target feature g's encoder direction w_g:
    ablating f (activation c) must move g's pre-activation by −c·|w_g|², i.e. by −c
    times their virtual weight (g stays active, so its activation moves by as much).

    adjacent: the source reads ``blocks.4.hook_resid_post``, the target
    ``blocks.5.hook_resid_pre`` (the same residual, no block between).
    through_blocks: source at block 2, target at block 5; w_g is along (1, ..., 1),
    which the LayerNorms of blocks 2-4 do not see, so only the direct path acts."""
    model = layer_pairs[2].model
    tokens, _ = finished_run
    p, f, g = 6, 0, 7
    d = model.cfg.d_model
    src_hook = "blocks.4.hook_resid_post" if case == "adjacent" else "blocks.2.hook_resid_pre"
    src = _hand_built(layer_pairs[2], src_hook)
    tgt = _hand_built(layer_pairs[5], "blocks.5.hook_resid_pre")
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens[None, : p + 1])
    x = cache["blocks.5.hook_resid_pre"][0, p]
    with torch.no_grad():
        if case == "through_blocks":
            tgt.sae.W_enc[:, g] = torch.ones(d) * (2.0 / d**0.5)  # |w_g| = 2
        w_g = tgt.sae.W_enc[:, g].clone()
        pre = float((x - tgt.sae.b_dec) @ w_g)
        tgt.sae.b_enc[g] = 6.0 - pre  # g fires at 6.0 on this token
        c = 0.5 * 6.0 / float(w_g @ w_g)  # ablating f halves it
        src.sae.W_enc[:, f] = 0.0
        src.sae.b_enc[f] = c
        src.sae.W_dec[f] = w_g
    check = causal_check(model, tokens, p, src, [tgt], features=[f],
                         target_features={tgt.hook_name: [g, 0, 1, 2]})
    effect = check.targets[0]
    assert check.activations[0] == pytest.approx(c, rel=1e-5)
    assert effect.baseline[0] == pytest.approx(6.0, abs=1e-4)
    vw = float(virtual_weights(src, tgt, [f], [g])[0, 0])
    assert vw == pytest.approx(float(w_g @ w_g), rel=1e-5)
    assert float(effect.delta[0, 0]) == pytest.approx(-c * vw, abs=1e-4)  # = −3.0
    assert float(effect.delta[0, 0]) == pytest.approx(-3.0, abs=1e-4)


def test_run_tokens_and_bad_requests(layer_pairs, finished_run):
    tokens, steps = finished_run
    assert tokens[0] == 50256 and tokens[1:].tolist() == [s.token_id for s in steps]
    model = layer_pairs[2].model
    with pytest.raises(ValueError, match="residual-stream"):
        causal_check(model, tokens, 3, LayerSae(layer_pairs[2].sae, "blocks.2.hook_attn_out"), [])
    with pytest.raises(ValueError, match="before"):
        causal_check(model, tokens, 3, layer_pairs[8], [layer_pairs[2]])
    with pytest.raises(ValueError, match="outside"):
        causal_check(model, tokens, len(tokens), layer_pairs[2], [layer_pairs[8]])


# ------------------------------------------------------------------ export and share links


def test_export_v2_round_trip_with_layers_and_reads_v1(layer_pairs):
    g, steps = _run(layer_pairs, settings=dataclasses.replace(SETTINGS, max_new_tokens=3))
    graph = GraphState()
    d = orjson.loads(orjson.dumps(run_to_json(steps, g.settings, {"model": "gpt2"}, graph, None,
                                              saes=g.saes, layer_labels={2: {steps[0].features[-1].index: "x"}})))
    assert d["schema"] == "axon-run/2"
    assert [s["layer"] for s in d["meta"]["saes"]] == [8, 2, 5, 11]
    assert d["meta"]["saes"][1]["hook_name"] == "blocks.2.hook_resid_pre"
    assert d["meta"]["saes"][0]["sae_id"] == "blocks.8.hook_resid_pre"
    assert {f["layer"] for t in d["tokens"] for f in t["features"]} == set(LAYERS)
    assert all(":" in key for key in d["labels"])
    back, settings, meta = run_from_json(d)
    assert back == steps and settings == g.settings and meta["saes"] == d["meta"]["saes"]
    v1 = {"schema": "axon-run/1", "meta": {"model": "gpt2"}, "settings": {"seed": 3}, "edges": [],
          "labels": {"5": "five"},
          "tokens": [{"position": 1, "token_id": 464, "text": "The", "is_prompt": True,
                      "next_token_id": None, "features": [{"index": 5, "activation": 2.5,
                                                           "attribution": None}]}]}
    old, settings, _ = run_from_json(v1)
    assert settings.seed == 3
    assert old == [TokenStep(1, 464, "The", True, (FeatureHit(5, 2.5),))]


def test_other_families_read_several_saes_exactly(pythia_hub):
    """Pythia (parallel attention + MLP): FamilyStepper reads the extra hooks in the same forward, exactly."""
    from axon_core.architectures import FamilyStepper
    from axon_core.loading import PairCache

    cache = PairCache(max_saes=2, device="cpu")
    primary = cache.get("pythia-70m-deduped-res-sm", "blocks.2.hook_resid_post")
    extra = cache.get("pythia-70m-deduped-res-sm", "blocks.0.hook_resid_post")
    settings = dataclasses.replace(SETTINGS, max_new_tokens=4)
    g = Generation(primary, PROMPT, settings, extra=[extra])
    assert isinstance(g.stepper, FamilyStepper) and g.stepper.extra_hooks == ("blocks.0.hook_resid_post",)
    steps = g.start()
    while not g.done:
        steps.append(g.step())
    tokens = torch.tensor([primary.model.tokenizer.bos_token_id] + [s.token_id for s in steps]) \
        if steps[0].position == 1 else torch.tensor([s.token_id for s in steps])
    ref = Reference.run(primary.model, tokens, {s.layer: (s.hook_name, s.sae) for s in g.saes})
    counts = check_steps(ref, rows_of_steps(steps), settings.feature_k, settings.activation_threshold)
    assert all(n > len(steps) for n in counts["features"].values()) and counts["largest"] > 1e-2, counts


def test_causal_check_of_a_steered_run_sees_what_the_run_saw(layer_pairs):
    """A run steered at block 5 while reading blocks 2, 8 and 11: with the run's edit, the
    check's baseline is the run's own features at blocks 8 and 11 (without it, it is not)."""
    from axon_core.steering import steering_edit

    pairs = layer_pairs
    edit = steering_edit(pairs[5].sae, ((3, 0.4), (9, -0.25)))  # the residual here is ~0.1 in size
    g = Generation(pairs[5], PROMPT, SETTINGS, edit=edit, extra=[pairs[i] for i in (2, 8, 11)])
    steps = g.start()
    while not g.done:
        steps.append(g.step())
    tokens = run_tokens(steps, pairs[5].model.tokenizer.bos_token_id)
    p = len(tokens) - 3
    run_hits = {layer: {f.index: f.activation for f in steps[p - 1].features if f.layer == layer} for layer in (8, 11)}
    targets = [pairs[8], pairs[11]]
    wanted = {t.hook_name: list(run_hits[LayerSae.of(t).layer]) for t in targets}
    steered = causal_check(pairs[2].model, tokens, p, pairs[2], targets, k=4, target_features=wanted,
                           edits={pairs[5].hook_name: edit})
    plain = causal_check(pairs[2].model, tokens, p, pairs[2], targets, k=4, target_features=wanted)
    for t, s in zip(steered.targets, plain.targets):
        expect = [run_hits[t.layer][i] for i in t.features]
        assert max(abs(a - b) for a, b in zip(t.baseline, expect)) <= 1e-4
        assert max(abs(a - b) for a, b in zip(s.baseline, expect)) > 1e-2
