"""encode_top (half-precision screen + exact rescoring) against SAELens's encode + top_features."""

from __future__ import annotations

import copy

import pytest
import torch

from axon_core import fast_encode
from axon_core.fast_encode import _SCREENS, _screened, encode_top
from axon_core.features import top_features


def _reference(sae, acts, k, threshold):
    with torch.inference_mode():
        return [top_features(row, k, threshold) for row in sae.encode(acts)]


def _same(got, want, tol=1e-5):
    assert [[i for i, _ in row] for row in got] == [[i for i, _ in row] for row in want]
    for g, w in zip(got, want):
        for (_, a), (_, b) in zip(g, w):
            assert abs(a - b) <= tol * max(1.0, abs(b))


@pytest.fixture(scope="module")
def sae_and_residuals(pair):
    sae = copy.deepcopy(pair.sae)  # private: the tests below edit it
    tokens = pair.model.to_tokens("The capital of France is Paris, and the capital of Italy is Rome.")
    with torch.inference_mode():
        _, cache = pair.model.run_with_cache(tokens)
    return sae, cache[pair.hook_name][0]


def test_equals_encode_on_real_and_extreme_inputs(sae_and_residuals):
    sae, resid = sae_and_residuals
    gen = torch.Generator().manual_seed(1)
    inputs = [resid[p] for p in range(resid.shape[0])]
    inputs += [resid[3] * s for s in (1e-6, 1e-3, 10.0, 1e3)]  # far from the usual scale
    inputs += [torch.randn(resid.shape[1], generator=gen) * resid.norm(dim=1).mean() for _ in range(20)]
    spiky = resid[2].clone()
    spiky[::2] = 0.0
    spiky[1] = 1e-30  # a subnormal in float16 and below
    inputs.append(spiky)
    for k, threshold in ((12, 0.1), (1, 0.0), (64, 0.5), (3, 5.0)):
        for x in inputs:
            _same(encode_top(sae, x[None], k, threshold), _reference(sae, x[None], k, threshold))
    screen = _SCREENS[sae]
    assert screen.checked and screen.ok  # the screen was used, and passed its check
    x = resid[4] - sae.b_dec
    assert _screened(sae, screen, x, 12, 0.1) is not None  # decided by the screen alone


def test_several_rows_and_other_cases_fall_back(sae_and_residuals):
    sae, resid = sae_and_residuals
    _same(encode_top(sae, resid, 8, 0.1), _reference(sae, resid, 8, 0.1))  # a prompt pass
    _same(encode_top(sae, resid[:1], 8, -1.0), _reference(sae, resid[:1], 8, -1.0))  # negative threshold
    hooked = copy.deepcopy(sae)
    seen = []
    hooked.hook_sae_acts_post.add_hook(lambda act, hook: seen.append(1))
    encode_top(hooked, resid[:1], 8, 0.1)
    assert seen  # a hook on the SAE is honoured: SAELens's own encode ran


def test_edited_weights_rebuild_the_screen(sae_and_residuals):
    sae, resid = sae_and_residuals
    sae = copy.deepcopy(sae)
    encode_top(sae, resid[:1], 8, 0.1)
    with torch.no_grad():
        sae.W_enc[:, 5] = sae.W_enc[:, 5] * -3.0 + 1.0
        sae.b_enc[7] += 50.0
    _same(encode_top(sae, resid[2:3], 8, 0.1), _reference(sae, resid[2:3], 8, 0.1))


def test_a_screen_whose_bound_fails_is_never_used(sae_and_residuals, monkeypatch):
    sae, resid = sae_and_residuals
    sae = copy.deepcopy(sae)
    real = fast_encode._bound
    monkeypatch.setattr(fast_encode, "_bound", lambda screen, x, s16: real(screen, x, s16) * 0.0)  # no margin
    with torch.no_grad():
        sae.W_enc.add_(1e-3)  # a fresh screen for this copy
    want = _reference(sae, resid[1:2], 12, 0.1)
    _same(encode_top(sae, resid[1:2], 12, 0.1), want)
    assert _SCREENS[sae].checked and not _SCREENS[sae].ok
    _same(encode_top(sae, resid[5:6], 12, 0.1), _reference(sae, resid[5:6], 12, 0.1))
