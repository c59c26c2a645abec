"""An SAE's top-k features of one residual, reading half the encoder's bytes.

On a CPU one token's SAE encode is a matrix-vector product bound by memory
bandwidth: GPT-2 small's 24,576-feature encoder is 75 MB of float32 read for
every token and every SAE (≈ 3.3 ms here). A run that reads four SAEs pays it
four times. Only the ``k`` strongest features are reported, so:

1. **Screen** with a float16 copy of the encoder (transposed, so PyTorch's
   fp16 matrix-vector kernel with float32 accumulation reads it at full
   bandwidth: 38 MB, ≈ 1 ms), and bound each feature's error from the
   rounding of x and W to float16 and of the result
   (``|s16 − s| ≤ B_g``, from ``‖x‖·‖W_g‖`` by Cauchy–Schwarz, with margin).
2. **Keep** every feature that could still be among the top ``k`` above the
   threshold: upper bound ≥ the k-th largest lower bound, and > threshold.
3. **Rescore** the few candidates exactly in float32, ``relu((x − b_dec)·W_g + b_g)``,
   the same formula as SAELens's ``encode``.

The reported features are therefore those of SAELens's own encode (values
equal to float32 rounding, ~1e-6). A feature's screen is checked once against
the full encode (on the first vector and two random ones at its scale); if the
bound ever failed there, or anything about the SAE, the input or the device is
not the plain case (ReLU ``StandardSAE``, no activation normalisation, no hooks
on its hook points, one float32 row on a CPU), :func:`encode_top` simply runs
``sae.encode`` + :func:`~axon_core.features.top_features`.

Worked example::

    encode_top(sae, resid[None], k=12, threshold=0.1)
    # [[(7124, 6.2), (88, 2.9), ...]]   == [top_features(sae.encode(resid[None])[0], 12, 0.1)]
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import torch

from .features import top_features

MAX_CANDIDATES = 256  # more than this: encode in full
_EPS16 = 2.0**-11  # float16 unit roundoff
_TINY16 = 2.0**-25  # half the smallest float16 subnormal step: absolute rounding error near 0


@dataclass
class _Screen:
    w16t: torch.Tensor  # [d_sae, d_in] float16
    norms: torch.Tensor  # [d_sae]: ‖W_g‖ (float32)
    l1: torch.Tensor  # [d_sae]: Σ|W_g| (float32)
    stamp: tuple
    checked: bool = False
    ok: bool = True


_SCREENS: "weakref.WeakKeyDictionary[object, _Screen]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def encode_top(sae, acts: torch.Tensor, k: int, threshold: float) -> list[list[tuple[int, float]]]:
    """``[top_features(row, k, threshold) for row in sae.encode(acts)]``, faster for one row."""
    screen = _screen_for(sae, acts, k, threshold)
    if screen is None:
        return [top_features(row, k, threshold) for row in sae.encode(acts)]
    x = acts[0].to(torch.float32)
    if sae.cfg.apply_b_dec_to_input:
        x = x - sae.b_dec
    found = _screened(sae, screen, x, k, threshold)
    if not screen.checked:
        found = _check(sae, screen, acts, x, k, threshold, found)
    return [found] if found is not None else [top_features(row, k, threshold) for row in sae.encode(acts)]


def _eligible(sae, acts: torch.Tensor, k: int, threshold: float) -> bool:
    try:
        from sae_lens.saes.standard_sae import StandardSAE
    except ImportError:  # pragma: no cover - another SAELens layout
        return False
    if type(sae).encode is not StandardSAE.encode or not isinstance(sae.activation_fn, torch.nn.ReLU):
        return False
    w = sae.W_enc
    if (acts.ndim != 2 or acts.shape[0] != 1 or acts.shape[1] != w.shape[0] or acts.device.type != "cpu"
            or w.device.type != "cpu" or w.dtype != torch.float32 or not 1 <= k <= w.shape[1] or threshold < 0):
        return False
    if getattr(sae.cfg, "normalize_activations", "none") not in (None, "none"):
        return False
    return not any(getattr(getattr(sae, name, None), "fwd_hooks", None)
                   for name in ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post"))


def _stamp(sae) -> tuple:
    return tuple((t.data_ptr(), t._version) for t in (sae.W_enc, sae.b_enc, sae.b_dec))


def _screen_for(sae, acts: torch.Tensor, k: int, threshold: float) -> _Screen | None:
    if not _eligible(sae, acts, k, threshold):
        return None
    stamp = _stamp(sae)
    with _LOCK:
        screen = _SCREENS.get(sae)
        if screen is None or screen.stamp != stamp:
            with torch.inference_mode():
                w = sae.W_enc.detach()
                screen = _Screen(w.t().contiguous().to(torch.float16), w.norm(dim=0), w.abs().sum(0), stamp)
            if not torch.isfinite(screen.w16t).all():  # weights beyond float16's range
                screen.ok = False
            _SCREENS[sae] = screen
    return screen if screen.ok else None


@torch.inference_mode()
def _screened(sae, screen: _Screen, x: torch.Tensor, k: int, threshold: float) -> list[tuple[int, float]] | None:
    """The top features through the screen, or None when it cannot decide (fall back)."""
    x16 = x.to(torch.float16)
    if not torch.isfinite(x16).all():
        return None
    s16 = torch.mv(screen.w16t, x16).float()
    if not torch.isfinite(s16).all():
        return None
    bound = _bound(screen, x, s16)
    pre = s16 + sae.b_enc
    lower_k = float((pre - bound).topk(k).values[-1])
    upper = pre + bound
    cand = ((upper >= lower_k) & (upper > threshold)).nonzero()[:, 0]
    if cand.numel() > MAX_CANDIDATES:
        return None
    if cand.numel() == 0:
        return []
    exact = (x[None] @ sae.W_enc.detach().index_select(1, cand) + sae.b_enc[cand])[0].relu()
    vals, order = exact.topk(min(k, exact.numel()))
    keep = vals > threshold
    return [(int(i), float(v)) for i, v in zip(cand[order[keep]].tolist(), vals[keep].tolist())]


def _bound(screen: _Screen, x: torch.Tensor, s16: torch.Tensor) -> torch.Tensor:
    """A safe bound on |s16 − x·W_g| for every feature g (twice the worst case derived below).

    x and W rounded to float16: each product off by ≤ (2u + u²)|x_i W_ig| + tiny·(|x_i| + |W_ig|)
    (u = 2^-11, tiny = 2^-25 covers subnormals); float32 accumulation over d terms
    adds ≤ d·2^-24·Σ|x_i W_ig|; Σ|x_i W_ig| ≤ ‖x‖·‖W_g‖; rounding the sum to float16 ≤ u·|s|
    ≤ u(|s16| + error)."""
    d = x.shape[0]
    rel = 2 * _EPS16 + _EPS16**2 + d * 2.0**-24
    products = rel * float(x.norm()) * screen.norms + _TINY16 * (float(x.abs().sum()) + screen.l1)
    return 2.0 * (products + _EPS16 * (s16.abs() + products))


def _check(sae, screen: _Screen, acts, x, k, threshold, found):
    """Once per SAE: the screen's bound holds against the full encode, on this vector and
    two random ones at its scale; if not, this SAE is never screened again."""
    with torch.inference_mode():
        xs = [x]
        gen = torch.Generator().manual_seed(0)
        for _ in range(2):
            r = torch.randn(x.shape, generator=gen)
            xs.append(r * (x.norm() / r.norm().clamp_min(1e-30)))
        for v in xs:
            exact = v @ sae.W_enc.detach()
            x16 = v.to(torch.float16)
            s16 = torch.mv(screen.w16t, x16).float()
            if not (torch.isfinite(x16).all() and torch.isfinite(s16).all()):
                continue
            if ((s16 - exact).abs() > 0.25 * _bound(screen, v, s16)).any():
                screen.ok = False
                break
        screen.checked = True
        reference = [top_features(row, k, threshold) for row in sae.encode(acts)][0]
        if not screen.ok or found is None or [i for i, _ in found] != [i for i, _ in reference]:
            screen.ok = False
            return reference
    return found
