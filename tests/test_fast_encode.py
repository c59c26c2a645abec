"""encode_top (a half-precision screen + exact rescoring, or plain float32, whichever
measures fastest) against SAELens's encode + top_features, for GPT-2's and Pythia's
ReLU SAEs and a JumpReLU SAE, on every path the chooser may pick."""

from __future__ import annotations

import copy

import pytest
import torch

from axon_core import fast_encode
from axon_core.fast_encode import _CHOICES, PATHS, _screened, choose_path, encode_path, encode_paths, encode_top
from axon_core.features import equal_up_to_ties, top_features


def _reference(sae, acts, k, threshold):
    with torch.inference_mode():
        return [top_features(row, k, threshold) for row in sae.encode(acts)]


def _same(got, want, tol=1e-5):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert equal_up_to_ties(g, w, tol), (g, w)


def _residuals(pair, prompt="The capital of France is Paris, and the capital of Italy is Rome."):
    with torch.inference_mode():
        _, cache = pair.model.run_with_cache(pair.model.to_tokens(prompt))
    return cache[pair.hook_name][0]


def _inputs(resid):
    """Real residuals, the same far from their scale, random ones at it, a sparse one with a subnormal."""
    gen = torch.Generator().manual_seed(1)
    inputs = [resid[p] for p in range(resid.shape[0])]
    inputs += [resid[3] * s for s in (1e-6, 1e-3, 10.0, 1e3)]
    inputs += [torch.randn(resid.shape[1], generator=gen) * resid.norm(dim=1).mean() for _ in range(12)]
    spiky = resid[2].clone()
    spiky[::2] = 0.0
    spiky[1] = 1e-30  # a subnormal in float16 and below
    return inputs + [spiky]


def _jumprelu_sae(d_in=64, d_sae=768, seed=0):
    """A random JumpReLU SAE (Gemma Scope's architecture) whose jump thresholds bite."""
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig

    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=False))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=gen) / d_in**0.5)
        sae.b_enc.copy_(0.2 * torch.randn(d_sae, generator=gen))
        sae.threshold.copy_(1.5 * torch.rand(d_sae, generator=gen))
    return sae.eval()


@pytest.fixture(scope="module")
def cases(pair, pythia_hub):
    """(name, private SAE copy, residuals) for GPT-2, Pythia and a JumpReLU SAE."""
    from axon_core.loading import PairCache

    pythia = PairCache(device="cpu").get("pythia-70m-deduped-res-sm", "blocks.2.hook_resid_post")
    jump = _jumprelu_sae()
    jump_resid = 3.0 * torch.randn(9, 64, generator=torch.Generator().manual_seed(2))
    return {"gpt2": (copy.deepcopy(pair.sae), _residuals(pair)),
            "pythia": (copy.deepcopy(pythia.sae), _residuals(pythia)),
            "jumprelu": (jump, jump_resid)}


def _forced(path):
    """A fake timer under which ``path`` is the fastest."""
    return lambda name, run: 1.0 if name == path else 5.0


@pytest.mark.parametrize("family", ["gpt2", "pythia", "jumprelu"])
def test_every_path_the_chooser_may_pick_equals_encode(cases, family):
    sae, resid = cases[family]
    sae = copy.deepcopy(sae)
    if family == "pythia":
        assert sae.cfg.apply_b_dec_to_input and sae.b_dec.abs().max() > 0
    if family == "jumprelu":
        assert type(sae).__name__ == "JumpReLUSAE"
        pre = resid @ sae.W_enc + sae.b_enc
        assert ((pre > 0.1) & (pre <= sae.threshold)).any()  # features the jump keeps dark
    for path in PATHS:
        choice = choose_path(sae, resid[:1], 12, 0.1, measure=_forced(path))
        assert choice.path == path and not choice.failed  # every path passed its check here
        assert (choice.screen is None) == (path == "fp32")
        _CHOICES[sae] = choice
        for k, threshold in ((12, 0.1), (1, 0.0), (64, 0.5), (3, 5.0)):
            for x in _inputs(resid):
                _same(encode_top(sae, x[None], k, threshold), _reference(sae, x[None], k, threshold))
        assert encode_path(sae) == path
        if choice.screen is not None:  # the screen decides real residuals alone (no fallback)
            x = resid[4] - sae.b_dec if sae.cfg.apply_b_dec_to_input else resid[4]
            assert _screened(sae, choice.screen, x, 12, 0.1) is not None


def test_the_chooser_picks_the_faster_path_of_fake_timings(cases):
    sae, resid = cases["gpt2"]
    sae = copy.deepcopy(sae)
    asked = []
    timings = {"fp16": 2.0, "bf16": 1.2, "fp32": 3.3}

    def measure(name, run):
        asked.append(name)
        return timings[name]

    choice = choose_path(sae, resid[:1], 12, 0.1, measure=measure)
    assert sorted(asked) == sorted(PATHS) and choice.path == "bf16" and choice.ms == timings
    timings.update(bf16=2.5)
    assert choose_path(sae, resid[:1], 12, 0.1, measure=measure).path == "fp16"
    timings.update(fp32=0.5)
    choice = choose_path(sae, resid[:1], 12, 0.1, measure=measure)
    assert choice.path == "fp32" and choice.screen is None


def test_first_use_measures_and_the_stats_say_which_path_runs(cases):
    sae, resid = cases["gpt2"]
    sae = copy.deepcopy(sae)
    assert encode_path(sae) is None
    _same(encode_top(sae, resid[:1], 12, 0.1), _reference(sae, resid[:1], 12, 0.1))
    path = encode_path(sae)
    assert path in PATHS
    row = next(r for r in encode_paths() if r["path"] == path and r["hook"] == sae.cfg.metadata.hook_name)
    assert set(row["ms"]) == set(PATHS) and all(t > 0 for t in row["ms"].values())


def test_several_rows_and_other_cases_fall_back(cases):
    sae, resid = cases["gpt2"]
    _same(encode_top(sae, resid, 8, 0.1), _reference(sae, resid, 8, 0.1))  # a prompt pass
    _same(encode_top(sae, resid[:1], 8, -1.0), _reference(sae, resid[:1], 8, -1.0))  # negative threshold
    hooked = copy.deepcopy(sae)
    seen = []
    hooked.hook_sae_acts_post.add_hook(lambda act, hook: seen.append(1))
    encode_top(hooked, resid[:1], 8, 0.1)
    assert seen and encode_path(hooked) is None  # a hook on the SAE is honoured: SAELens's own encode ran


def test_edited_weights_choose_again(cases):
    sae, resid = cases["jumprelu"]
    sae = copy.deepcopy(sae)
    encode_top(sae, resid[:1], 8, 0.1)
    first = _CHOICES[sae]
    with torch.no_grad():
        sae.W_enc[:, 5] = sae.W_enc[:, 5] * -3.0 + 1.0
        sae.b_enc[7] += 50.0
        sae.threshold[9] = 100.0
    _same(encode_top(sae, resid[2:3], 8, 0.1), _reference(sae, resid[2:3], 8, 0.1))
    assert _CHOICES[sae] is not first


@pytest.mark.parametrize("family", ["gpt2", "jumprelu"])
def test_a_screen_whose_bound_fails_is_never_chosen(cases, family, monkeypatch):
    sae, resid = cases[family]
    sae = copy.deepcopy(sae)
    real = fast_encode._bound
    monkeypatch.setattr(fast_encode, "_bound", lambda screen, x, sh: real(screen, x, sh) * 0.0)  # no margin
    choice = choose_path(sae, resid[1:2], 12, 0.1, measure=_forced("bf16"))
    assert choice.path == "fp32" and choice.failed == ["fp16", "bf16"] and set(choice.ms) == {"fp32"}
    _CHOICES[sae] = choice
    _same(encode_top(sae, resid[5:6], 12, 0.1), _reference(sae, resid[5:6], 12, 0.1))


@pytest.mark.parametrize("path", ["fp16", "bf16"])
def test_jumprelu_thresholds_within_the_screens_error_are_decided_exactly(cases, path):
    """Jump thresholds just above and just below strong features' pre-activations:
    the screen cannot tell them apart, the exact rescoring must."""
    sae, resid = cases["jumprelu"]
    sae = copy.deepcopy(sae)
    x = resid[0]
    with torch.inference_mode():
        pre = x @ sae.W_enc + sae.b_enc
        top = pre.topk(6).indices
        with torch.no_grad():
            for j, g in enumerate(top.tolist()):
                sae.threshold[g] = pre[g] * (1 + (1e-5 if j % 2 == 0 else -1e-5))  # dark, lit, dark, ...
    want = _reference(sae, x[None], 12, 0.1)
    dark = {g for j, g in enumerate(top.tolist()) if j % 2 == 0}
    assert want[0] and not dark & {i for i, _ in want[0]}
    choice = choose_path(sae, x[None], 12, 0.1, measure=_forced(path))
    assert choice.path == path
    _CHOICES[sae] = choice
    _same(encode_top(sae, x[None], 12, 0.1), want)
