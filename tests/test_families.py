"""Pythia (GPT-NeoX), Gemma 2 and Gemma 3: loaded by their real names offline,
streamed by the fast stepper exactly as a full TransformerLens forward + SAELens
encode computes them.

Gemma's dimensions are hard-coded in TransformerLens, so ``gemma-2-2b`` (10 GB
in fp32) is checked here on a small ``HookedTransformerConfig`` with the same
flags (RMSNorm before and after each sublayer, GQA, soft caps, local/global
layers); ``google/gemma-3-270m`` loads at its real size from the offline hub.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from axon_core.architectures import FamilyStepper, FamilyWeights
from axon_core.generation import GenerationSettings, generate
from axon_core.residuals import FastStepper, TransformerLensStepper, make_stepper
from axon_core.steering import steering_edit
from reference import Reference, check_steps, rows_of_steps

PROMPT = "The capital of France is"
SETTINGS = GenerationSettings(max_new_tokens=12, temperature=1.0, top_k=0, top_p=1.0,
                              repetition_penalty=1.0, seed=3, feature_k=8, activation_threshold=0.1,
                              stop_at_eos=False)

_COMMON = dict(d_model=64, d_head=16, n_heads=4, d_mlp=128, n_layers=6, n_ctx=96, d_vocab=512)
FLAGS = {
    # pythia-70m-deduped: rotary on a quarter of each head (NeoX halves), parallel attention + MLP.
    "pythia": dict(act_fn="gelu", normalization_type="LN", positional_embedding_type="rotary", rotary_dim=4,
                   rotary_adjacent_pairs=False, parallel_attn_mlp=True,
                   original_architecture="GPTNeoXForCausalLM", default_prepend_bos=False),
    # gemma-2-2b's flags; window and soft caps small enough to bite on a short sequence.
    "gemma2": dict(act_fn="gelu_pytorch_tanh", normalization_type="RMS", positional_embedding_type="rotary",
                   rotary_dim=16, n_key_value_heads=2, window_size=5, use_local_attn=True,
                   attn_types=["local", "global"] * 3, attn_scores_soft_cap=2.0, output_logits_soft_cap=1.5,
                   gated_mlp=True, final_rms=True, use_normalization_before_and_after=True,
                   original_architecture="Gemma2ForCausalLM"),
    # gemma-3-270m's flags: one KV head, q/k RMS norms, two rotary bases, 5 local : 1 global.
    "gemma3": dict(act_fn="gelu_pytorch_tanh", normalization_type="RMS", positional_embedding_type="rotary",
                   rotary_dim=16, rotary_base=1e6, rotary_base_local=1e4, n_key_value_heads=1, use_qk_norm=True,
                   window_size=5, use_local_attn=True, attn_types=["local"] * 5 + ["global"], gated_mlp=True,
                   final_rms=True, use_normalization_before_and_after=True,
                   original_architecture="Gemma3ForCausalLM"),
}
HOOKS = ["blocks.4.hook_resid_pre", "blocks.2.hook_resid_mid", "blocks.3.hook_resid_post",
         "blocks.2.hook_attn_out", "blocks.5.hook_mlp_out", "blocks.1.attn.hook_z"]


def small_model(family: str, processed: bool = False, seed: int = 0, tokenizer=None):
    """A random model with ``family``'s flags; norms and biases perturbed so each one matters.
    With ``tokenizer``, its vocabulary is the tokenizer's (so a prompt can be generated from)."""
    import warnings

    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(seed)
    over = {} if tokenizer is None else {"d_vocab": len(tokenizer)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = HookedTransformerConfig(**{**_COMMON, **over}, **FLAGS[family])
        model = HookedTransformer(cfg, tokenizer=tokenizer).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith((".w", ".b")) or ".b_" in name:
                p.add_(0.3 * torch.randn_like(p))
    if processed:  # what from_pretrained does: fold norms, centre (LN only)
        ln = FLAGS[family]["normalization_type"] == "LN"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.process_weights_(fold_ln=True, center_writing_weights=ln, center_unembed=ln)
    return model


def _stepwise(stepper, tokens, n_prompt):
    out = stepper.step(tokens[:n_prompt])
    acts, logits, scales = [out.acts], [out.last_logits], [out.final_scale]
    for tok in tokens[n_prompt:]:
        out = stepper.step(tok[None])
        acts.append(out.acts)
        logits.append(out.last_logits)
        scales.append(out.final_scale)
    return torch.cat(acts), torch.stack(logits), torch.cat(scales)


@pytest.mark.parametrize("processed", [False, True], ids=["raw", "processed"])
@pytest.mark.parametrize("family", sorted(FLAGS))
def test_family_steps_equal_full_forward(family, processed):
    """Every hook the stepper reports, the logits and the final-norm scale, at
    prompt and generated positions, past the sliding window."""
    model = small_model(family, processed)
    weights = FamilyWeights.from_model(model)
    tokens = torch.randint(1, 512, (24,), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref_logits, cache = model.run_with_cache(tokens[None])
    n_prompt = 7
    for hook in HOOKS:
        if "resid_mid" in hook and FLAGS[family].get("parallel_attn_mlp"):
            assert isinstance(make_stepper(model, hook, weights=weights), TransformerLensStepper)
            continue
        stepper = make_stepper(model, hook, weights=weights, capacity=3)  # grows past its capacity
        assert isinstance(stepper, FamilyStepper)
        acts, logits, scales = _stepwise(stepper, tokens, n_prompt)
        assert acts.shape == cache[hook][0].shape
        assert (acts - cache[hook][0]).abs().max() <= 1e-4, hook
        assert (logits - ref_logits[0, n_prompt - 1:]).abs().max() <= 1e-4, hook
        assert (scales - cache["ln_final.hook_scale"][0, :, 0]).abs().max() <= 1e-5, hook


def test_sliding_window_and_soft_caps_are_what_make_it_exact():
    """The reference really depends on the Gemma flags: dropping the window or a
    soft cap from the stepper's weights breaks the match (so the test above can fail)."""
    model = small_model("gemma2")
    tokens = torch.randint(1, 512, (20,), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ref_logits, _ = model.run_with_cache(tokens[None])
    weights = FamilyWeights.from_model(model)
    for broken in (
        dataclasses.replace(weights, blocks=[dataclasses.replace(b, window=None) for b in weights.blocks]),
        dataclasses.replace(weights, attn_soft_cap=None),
        dataclasses.replace(weights, logit_soft_cap=None),
    ):
        _, logits, _ = _stepwise(FamilyStepper(broken, "blocks.5.hook_resid_post"), tokens, 4)
        assert (logits - ref_logits[0, 3:]).abs().max() > 1e-3


def test_stepper_choice_by_architecture(pair):
    assert isinstance(make_stepper(pair.model, pair.hook_name, weights=pair.fast_weights), FastStepper)
    model = small_model("gemma3")
    assert isinstance(make_stepper(model, "blocks.2.hook_resid_post"), FamilyStepper)
    assert isinstance(make_stepper(model, "blocks.2.ln1.hook_normalized"), TransformerLensStepper)
    model.cfg.use_attention_sinks = True  # something the fast forward does not implement
    assert FamilyWeights.why_not(model) == "attention sinks"
    assert isinstance(make_stepper(model, "blocks.2.hook_resid_post"), TransformerLensStepper)


def test_stepper_refuses_to_overflow_context():
    stepper = FamilyStepper(FamilyWeights.from_model(small_model("gemma2")), "blocks.1.hook_resid_post")
    stepper.step(torch.ones(95, dtype=torch.long))
    stepper.step(torch.ones(1, dtype=torch.long))
    with pytest.raises(ValueError, match="context"):
        stepper.step(torch.ones(1, dtype=torch.long))


# --- loaded by their real names from the offline hub ---------------------------------


def _check_run(pair, steps, prepend_bos, edit_hook=None):
    """The streamed features equal ``sae.encode`` of a full ``run_with_cache`` (with the
    same edit hooked in, if any), at prompt and generated positions, and each one's
    attribution is tests/reference.py's (``cache.logit_attrs``, or the model's own
    final norm frozen at the cached scale where its weight is not folded); returns
    the encoded rows and the cache."""
    model, sae = pair.model, pair.sae
    bos = [model.tokenizer.bos_token_id] if prepend_bos else []
    tokens = bos + [s.token_id for s in steps]
    hooks = [(pair.hook_name, edit_hook)] if edit_hook else []
    ref = Reference.run(model, tokens, {None: (pair.hook_name, sae)}, fwd_hooks=hooks)
    assert [s.position for s in steps] == list(range(len(bos), len(tokens)))
    counts = check_steps(ref, rows_of_steps(steps), SETTINGS.feature_k, SETTINGS.activation_threshold)
    assert counts["features"][None] > 3 * len(steps)  # the fixture's SAE fires like a real one
    assert counts["attributed"] > 3 * (len(steps) - 1) and counts["largest"] > 1e-2  # attributions not all ~0
    assert sum(not s.is_prompt for s in steps) == SETTINGS.max_new_tokens
    return ref.acts[None], ref.cache


@pytest.fixture(scope="module")
def pythia_pair(pythia_hub):
    from axon_core.loading import PairCache

    return PairCache(device="cpu").get("pythia-70m-deduped-res-sm", "blocks.2.hook_resid_post")


def test_pythia_by_real_name_streams_exactly(pythia_pair):
    pair = pythia_pair
    assert pair.model.cfg.original_architecture == "GPTNeoXForCausalLM"
    assert isinstance(pair.fast_weights, FamilyWeights)
    assert pair.neuronpedia_id == "pythia-70m-deduped/2-res-sm"
    assert pair.sae.cfg.apply_b_dec_to_input and pair.sae.b_dec.abs().max() > 0
    assert pair.model.to_string(pair.model.to_tokens(PROMPT, prepend_bos=False)[0]) == PROMPT
    steps = list(generate(pair, PROMPT, SETTINGS))
    assert isinstance(make_stepper(pair.model, pair.hook_name, weights=pair.fast_weights), FamilyStepper)
    _check_run(pair, steps, prepend_bos=False)


def test_pythia_steering_adds_exactly_the_decoder_direction(pythia_pair):
    pair = pythia_pair
    feature = 11
    direction = pair.sae.W_dec[feature].detach()
    with torch.inference_mode():  # a push as large as the residual itself (the tiny model's is small)
        _, plain_cache = pair.model.run_with_cache(PROMPT)
    coef = 2.0 * float(plain_cache[pair.hook_name][0].norm(dim=-1).mean() / direction.norm())
    steered = list(generate(pair, PROMPT, SETTINGS, edit=steering_edit(pair.sae, ((feature, coef),))))
    plain = list(generate(pair, PROMPT, SETTINGS))
    assert [s.token_id for s in steered] != [s.token_id for s in plain]
    _, cache = _check_run(pair, steered, prepend_bos=False, edit_hook=lambda act, hook: act + coef * direction)
    tokens = torch.tensor([s.token_id for s in steered])
    with torch.inference_mode():
        _, plain_cache = pair.model.run_with_cache(tokens[None])
    delta = cache[pair.hook_name][0] - plain_cache[pair.hook_name][0]
    assert torch.allclose(delta, (coef * direction).expand_as(delta), atol=1e-4)


def _random_sae(model, hook: str, prepend_bos: bool, d_sae: int = 512, seed: int = 0):
    """A random StandardSAE on ``hook`` of ``model``, its biases set so that about
    one feature in twenty fires on the model's residuals there."""
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

    d = model.cfg.d_model
    meta = SAEMetadata(hook_name=hook, prepend_bos=prepend_bos, model_name="small")
    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=d_sae, apply_b_dec_to_input=False, metadata=meta))
    gen = torch.Generator().manual_seed(seed)
    probe = torch.randint(0, model.cfg.d_vocab, (1, 32), generator=gen)
    with torch.inference_mode():
        _, cache = model.run_with_cache(probe, names_filter=hook)
    resid = cache[hook][0]
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d, d_sae, generator=gen) / resid.norm(dim=-1).mean())
        sae.W_dec.copy_(torch.randn(d_sae, d, generator=gen) / d**0.5)
        sae.b_enc.copy_(-(resid @ sae.W_enc).quantile(0.95, dim=0) + 0.2)
    return sae.eval()


@pytest.mark.parametrize("family", ["pythia", "gemma3"])
def test_unfolded_final_norm_attributions_match_the_reference(family, pythia_pair):
    """Where the final norm keeps its weight (``normalization_type`` "LN" / "RMS": a
    model not folded by from_pretrained), the attribution goes through it
    (``ln_weight``; LayerNorm centres, RMSNorm does not): against the model's own
    ``ln_final`` frozen at the cached scale (tests/reference.py), on Pythia's and
    Gemma 3's flags, every position."""
    from axon_core.loading import LoadedPair
    from axon_core.residuals import fast_weights_for

    model = small_model(family, tokenizer=pythia_pair.model.tokenizer)
    assert model.cfg.normalization_type == {"pythia": "LN", "gemma3": "RMS"}[family]
    assert (model.ln_final.w - 1).abs().max() > 0.1  # a weight that matters (small_model perturbs it)
    hook = "blocks.3.hook_resid_post"
    prepend_bos = family == "gemma3"
    pair = LoadedPair(model, _random_sae(model, hook, prepend_bos), pythia_pair.choice, hook, "cpu",
                      fast_weights_for(model))
    assert isinstance(pair.fast_weights, FamilyWeights)
    steps = list(generate(pair, PROMPT, SETTINGS))
    _check_run(pair, steps, prepend_bos=prepend_bos)


def test_gemma3_270m_by_real_name_streams_exactly_and_honours_thresholds(gemma3_pair):
    pair = gemma3_pair
    cfg = pair.model.cfg
    assert (cfg.d_model, cfg.n_layers, cfg.d_vocab, cfg.n_key_value_heads) == (640, 18, 262144, 1)
    assert cfg.use_qk_norm and cfg.use_local_attn and cfg.use_normalization_before_and_after
    assert isinstance(pair.fast_weights, FamilyWeights)
    assert pair.hook_name == "blocks.12.hook_resid_post"
    assert pair.neuronpedia_id == "gemma-3-270m/12-gemmascope-2-res-16k"
    sae = pair.sae
    assert type(sae).__name__ == "JumpReLUSAE" and not sae.cfg.apply_b_dec_to_input
    assert pair.model.to_string(pair.model.to_tokens(PROMPT, prepend_bos=False)[0]) == PROMPT
    steps = list(generate(pair, PROMPT, SETTINGS))
    encoded, cache = _check_run(pair, steps, prepend_bos=True)
    # JumpReLU: a feature whose pre-activation is positive but below its own
    # threshold never shows; every shown one is at least its threshold.
    with torch.inference_mode():
        pre = cache[pair.hook_name][0] @ sae.W_enc + sae.b_enc
    threshold = sae.threshold.detach()
    below = (pre > SETTINGS.activation_threshold) & (pre < threshold)
    assert below.any()
    shown = {(s.position, f.index) for s in steps for f in s.features}
    assert shown and not any(below[p, i] for p, i in shown)
    assert all(f.activation >= float(threshold[f.index]) for s in steps for f in s.features)


def test_gemma_scope_2b_sae_loads_by_real_name(offline_hub):
    """``gemma-scope-2b-pt-res-canonical`` goes through SAELens's ``gemma_2`` conversion
    (params.npz) unchanged; its width is fixed at Gemma 2 2B's 2304."""
    from sae_lens import SAE

    from scripts.offline_hub import GEMMA2_SAE_REPO, write_gemma2_sae

    if not (offline_hub / ("models--" + GEMMA2_SAE_REPO.replace("/", "--"))).exists():
        write_gemma2_sae(offline_hub)
    sae = SAE.from_pretrained("gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical", device="cpu")
    assert type(sae).__name__ == "JumpReLUSAE"
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (2304, 16384)
    assert sae.cfg.metadata.hook_name == "blocks.12.hook_resid_post"
    assert sae.cfg.metadata.model_name == "gemma-2-2b"
    x = 30.0 * torch.randn(16, 2304, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        acts = sae.encode(x)
        pre = x @ sae.W_enc + sae.b_enc
    fired = acts > 0
    assert fired.any() and (~fired & (pre > 0)).any()  # some positive pre-activations stay below threshold
    assert torch.all(acts[fired] >= sae.threshold.expand_as(acts)[fired])
    del sae


def test_picker_hides_transcoders_and_temporal_saes_and_offers_the_families(tmp_path, monkeypatch):
    from axon_core import catalogue

    monkeypatch.setenv("AXON_CACHE_DIR", str(tmp_path))  # never the user's cache
    cat = catalogue.parse_directory()
    for release in ("gemma-scope-2-270m-pt-transcoders", "gemma-scope-2b-pt-transcoders",
                    "mwhanna-qwen3-0.6b-transcoders-lowl0"):
        assert cat.hidden[release] == catalogue.TRANSCODER_REASON
        assert release not in cat.by_release
    assert cat.hidden["mntss-gemma-2-2b-2.5m-clt-as-per-layer"].startswith("cross-layer transcoder")
    assert cat.hidden["temporal-sae-gemma-2-2b"] == catalogue.TEMPORAL_REASON
    offered = {m: [r.release for r in cat.releases(m)] for m in cat.models()}
    assert not any("transcoder" in r or "temporal" in r for rs in offered.values() for r in rs)
    assert "pythia-70m-deduped-res-sm" in offered["pythia-70m-deduped"]
    assert "gemma-scope-2b-pt-res-canonical" in offered["gemma-2-2b"]
    assert "gemma-scope-2-270m-pt-res" in offered["google/gemma-3-270m"]
    choice = cat.choice("gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical")
    assert (choice.d_in, choice.d_sae, choice.neuronpedia_id) == (2304, 16384, "gemma-2-2b/12-gemmascope-res-16k")
    assert cat.choice("pythia-70m-deduped-res-sm", "blocks.2.hook_resid_post").d_sae == 32768
    assert catalogue.unsupported_reason("x-res", None, ["layer_3/width_16k"]) is None


def test_family_sizes_for_the_memory_check():
    from axon_core.loading import model_parameters

    assert model_parameters("gemma-2-2b") == 2_614_341_888  # ≈ 10.5 GB in fp32: refused on a small Space
    assert model_parameters("google/gemma-3-270m") == 268_098_176
    assert model_parameters("pythia-70m-deduped") == 70_426_624


def test_extra_hooks_read_in_the_same_forward():
    from axon_core.residuals import StepOutput

    assert "extra" in StepOutput.__dataclass_fields__  # multi-hook steps (the layered run reads them)
    model = small_model("gemma3", processed=True)
    tokens = torch.randint(1, 512, (12,), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens[None])
    extra = ("blocks.1.hook_mlp_out", "blocks.4.hook_resid_pre")
    stepper = make_stepper(model, "blocks.3.hook_resid_post", extra_hooks=extra)
    assert isinstance(stepper, FamilyStepper)
    outs = [stepper.step(tokens[:5])] + [stepper.step(t[None]) for t in tokens[5:]]
    for name in extra:
        got = torch.cat([o.extra[name] for o in outs])
        assert (got - cache[name][0]).abs().max() <= 1e-4
