"""An SAE's top-k features of one residual, by the fastest exact path on this host.

On a CPU one token's SAE encode is a matrix-vector product bound by memory
bandwidth: GPT-2 small's 24,576-feature encoder is 75 MB of float32 read for
every token and every SAE. Only the ``k`` strongest features are reported, so
the encoder can be read in half precision first:

1. **Screen** with a half-precision copy of the encoder (float16 or bfloat16,
   transposed, so PyTorch's matrix-vector kernel (``F.linear``) with float32 accumulation
   reads it at full bandwidth: half the bytes), and bound each feature's error
   from the rounding of x and W and of the result (``|s_half − s| ≤ B_g``, from
   ``‖x‖·‖W_g‖`` by Cauchy–Schwarz, with margin; bfloat16's unit roundoff is 8×
   float16's, so its bound is looser and keeps more candidates).
2. **Keep** every feature that could still be among the top ``k`` above the
   threshold: upper bound ≥ the k-th largest lower bound, and > threshold
   (for a JumpReLU SAE also > the feature's own jump threshold).
3. **Rescore** the few candidates exactly in float32, ``relu((x − b_dec)·W_g + b_g)``
   (JumpReLU: times ``pre > θ_g``), the same formula as SAELens's ``encode``.

Which path is fastest depends on the host (a CPU with AMX or avx512_bf16 reads
bfloat16 fastest, one with only AVX2 float16, and plain float32 ``sae.encode``
may win where conversions are slow), so it is **measured**: on an SAE's first
eligible call :func:`choose_path` checks each path against ``sae.encode`` (its
bound on this vector and two random ones at its scale, and the same top
features), times the paths that pass, keeps the fastest and frees the other
copies. :func:`encode_path` / :func:`encode_paths` say which path runs
(``/engine_stats`` shows them). Anything not the plain case (another SAE
architecture, activation normalisation, hooks on its hook points, more than
one row, not a float32 CPU tensor) simply runs ``sae.encode`` +
:func:`~axon_core.features.top_features`.

The reported features are therefore those of SAELens's own encode (values
equal to float32 rounding, ~1e-6; features with equal activations may come in
either order).

Worked example::

    encode_top(sae, resid[None], k=12, threshold=0.1)
    # [[(7124, 6.2), (88, 2.9), ...]]   == [top_features(sae.encode(resid[None])[0], 12, 0.1)]
    encode_path(sae)                    # 'fp16' (this host), 'bf16', or 'fp32'
"""

from __future__ import annotations

import statistics
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .features import top_features

MAX_CANDIDATES = 256  # more than this: encode in full
SCREEN_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
PATHS = ("fp16", "bf16", "fp32")  # fp32: SAELens's encode + top_features
_EPS = {"fp16": 2.0**-11, "bf16": 2.0**-8}  # unit roundoff
_TINY = {"fp16": 2.0**-25, "bf16": 2.0**-134}  # half the smallest subnormal step: absolute error near 0


@dataclass
class _Screen:
    name: str  # "fp16" or "bf16"
    w_t: torch.Tensor  # [d_sae, d_in] in the half dtype
    norms: torch.Tensor  # [d_sae]: ‖W_g‖ (float32)
    l1: torch.Tensor  # [d_sae]: Σ|W_g| (float32)


@dataclass
class _Choice:
    """The path chosen for one SAE (for the weights it had then: ``stamp``)."""

    path: str
    stamp: tuple
    screen: _Screen | None = None
    ms: dict[str, float] = field(default_factory=dict)  # measured median per path that passed its check
    failed: list[str] = field(default_factory=list)  # paths whose check failed


_CHOICES: "weakref.WeakKeyDictionary[object, _Choice]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()
Measure = Callable[[str, Callable[[], object]], float]


def encode_top(sae, acts: torch.Tensor, k: int, threshold: float) -> list[list[tuple[int, float]]]:
    """``[top_features(row, k, threshold) for row in sae.encode(acts)]``, faster for one row."""
    choice = _choice_for(sae, acts, k, threshold)
    if choice is None or choice.screen is None:
        return _plain(sae, acts, k, threshold)
    found = _screened(sae, choice.screen, _input(sae, acts), k, threshold)
    return [found] if found is not None else _plain(sae, acts, k, threshold)


def encode_path(sae) -> str | None:
    """The path :func:`encode_top` takes for one row of ``sae``: ``fp16`` or ``bf16``
    (a half-precision screen + exact rescoring), ``fp32`` (SAELens's encode), or
    None before its first eligible call (or for an SAE that is never eligible)."""
    choice = _CHOICES.get(sae)
    return None if choice is None else choice.path


def encode_paths() -> list[dict]:
    """Every SAE seen so far: hook, width, the path it takes and the timings behind it."""
    with _LOCK:
        items = list(_CHOICES.items())
    return [{"hook": getattr(getattr(sae.cfg, "metadata", None), "hook_name", None), "d_sae": int(sae.cfg.d_sae),
             "path": c.path, "ms": {p: round(t, 3) for p, t in c.ms.items()}, "failed": list(c.failed)}
            for sae, c in items]


def _plain(sae, acts, k, threshold):
    return [top_features(row, k, threshold) for row in sae.encode(acts)]


def _input(sae, acts: torch.Tensor) -> torch.Tensor:
    x = acts[0].to(torch.float32)
    return x - sae.b_dec if sae.cfg.apply_b_dec_to_input else x


def _jump(sae) -> bool:
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE

    return type(sae).encode is JumpReLUSAE.encode


def _eligible(sae, acts: torch.Tensor, k: int, threshold: float) -> bool:
    try:
        from sae_lens.saes.jumprelu_sae import JumpReLUSAE
        from sae_lens.saes.standard_sae import StandardSAE
    except ImportError:  # pragma: no cover - another SAELens layout
        return False
    if type(sae).encode not in (StandardSAE.encode, JumpReLUSAE.encode):
        return False
    if not isinstance(sae.activation_fn, torch.nn.ReLU):
        return False
    w = sae.W_enc
    if (acts.ndim != 2 or acts.shape[0] != 1 or acts.shape[1] != w.shape[0] or acts.device.type != "cpu"
            or w.device.type != "cpu" or w.dtype != torch.float32 or not 1 <= k <= w.shape[1] or threshold < 0):
        return False
    if getattr(sae.cfg, "normalize_activations", "none") not in (None, "none"):
        return False
    if getattr(sae.cfg, "reshape_activations", "none") not in (None, "none"):
        return False
    return not any(getattr(getattr(sae, name, None), "fwd_hooks", None)
                   for name in ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post"))


def _stamp(sae) -> tuple:
    tensors = [sae.W_enc, sae.b_enc, sae.b_dec] + ([sae.threshold] if hasattr(sae, "threshold") else [])
    return tuple((t.data_ptr(), t._version) for t in tensors)


def _choice_for(sae, acts: torch.Tensor, k: int, threshold: float) -> _Choice | None:
    if not _eligible(sae, acts, k, threshold):
        return None
    stamp = _stamp(sae)
    with _LOCK:
        choice = _CHOICES.get(sae)
        if choice is None or choice.stamp != stamp:
            choice = _CHOICES[sae] = choose_path(sae, acts, k, threshold)
    return choice


def _build(sae, name: str) -> _Screen | None:
    with torch.inference_mode():
        w = sae.W_enc.detach()
        w_t = w.t().contiguous().to(SCREEN_DTYPES[name])
        if not torch.isfinite(w_t).all():  # weights beyond the half dtype's range
            return None
        return _Screen(name, w_t, w.norm(dim=0), w.abs().sum(0))


def _interleaved(runs: dict[str, Callable[[], object]], rounds: int = 7) -> dict[str, float]:
    """Median ms of each run, timed in turns (a burst of load elsewhere hits every path alike)."""
    for run in runs.values():
        run()  # once untimed: caches, lazy kernels
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            t = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t)
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


def choose_path(sae, acts: torch.Tensor, k: int, threshold: float, measure: Measure | None = None) -> _Choice:
    """Check every path against ``sae.encode`` on ``acts`` (one row), time those that
    pass (``measure(path, run) -> ms``; by default the median of seven runs of each,
    in turns) and return the fastest (ties: the earlier in :data:`PATHS`)."""
    x = _input(sae, acts)
    with torch.inference_mode():
        reference = _plain(sae, acts, k, threshold)[0]
    runs: dict[str, Callable[[], object]] = {"fp32": lambda: _plain(sae, acts, k, threshold)}
    screens: dict[str, _Screen] = {}
    failed = []
    for name in SCREEN_DTYPES:
        screen = _build(sae, name)
        if screen is None or not _check(sae, screen, x, k, threshold, reference):
            failed.append(name)
            continue
        screens[name] = screen
        runs[name] = lambda s=screen: _screened(sae, s, x, k, threshold)
    with torch.inference_mode():
        if measure is None:
            ms = _interleaved(runs)
        else:
            ms = {name: float(measure(name, run)) for name, run in runs.items()}
    best = min(ms, key=lambda name: (ms[name], PATHS.index(name)))
    return _Choice(best, _stamp(sae), screens.get(best), ms, failed)


@torch.inference_mode()
def _screened(sae, screen: _Screen, x: torch.Tensor, k: int, threshold: float) -> list[tuple[int, float]] | None:
    """The top features through the screen, or None when it cannot decide (fall back)."""
    xh = x.to(screen.w_t.dtype)
    if not torch.isfinite(xh).all():
        return None
    sh = _half_scores(screen, xh)
    if not torch.isfinite(sh).all():
        return None
    bound = _bound(screen, x, sh)
    pre = sh + sae.b_enc
    lower, upper = pre - bound, pre + bound
    jump = sae.threshold if _jump(sae) else None
    if jump is not None:  # a feature fires at pre > θ_g (and pre > 0, from the ReLU)
        lower = torch.where(lower > jump, lower, torch.zeros((), dtype=lower.dtype))
    lower_k = float(lower.topk(k).values[-1])
    keep = (upper >= lower_k) & (upper > threshold)
    if jump is not None:
        keep &= upper > jump
    cand = keep.nonzero()[:, 0]
    if cand.numel() > MAX_CANDIDATES:
        return None
    if cand.numel() == 0:
        return []
    exact_pre = (x[None] @ sae.W_enc.detach().index_select(1, cand) + sae.b_enc[cand])[0]
    exact = exact_pre.relu()
    if jump is not None:
        exact = exact * (exact_pre > jump[cand]).to(exact.dtype)
    vals, order = exact.topk(min(k, exact.numel()))
    keep = vals > threshold
    return [(int(i), float(v)) for i, v in zip(cand[order[keep]].tolist(), vals[keep].tolist())]


def _half_scores(screen: _Screen, xh: torch.Tensor) -> torch.Tensor:
    """``x · W_g`` for every feature from the half-precision copy (float32 accumulation,
    float32 out). ``F.linear`` with one row rather than ``torch.mv``: the same products,
    but PyTorch's ``mv`` kernel for half dtypes read the copy 1.6× slower on an AVX-512
    Xeon (5.5 against 3.5 ms for 24,576 × 768, 2 threads)."""
    return torch.nn.functional.linear(xh[None], screen.w_t)[0].float()


def _bound(screen: _Screen, x: torch.Tensor, sh: torch.Tensor) -> torch.Tensor:
    """A safe bound on |s_half − x·W_g| for every feature g (twice the worst case derived below).

    x and W rounded to the half dtype (unit roundoff u: 2^-11 float16, 2^-8 bfloat16):
    each product off by ≤ (2u + u²)|x_i W_ig| + tiny·(|x_i| + |W_ig|) (tiny covers
    subnormals); float32 accumulation over d terms adds ≤ d·2^-24·Σ|x_i W_ig|;
    Σ|x_i W_ig| ≤ ‖x‖·‖W_g‖; rounding the sum to the half dtype ≤ u·|s| ≤ u(|s_half| + error)."""
    d, u = x.shape[0], _EPS[screen.name]
    rel = 2 * u + u**2 + d * 2.0**-24
    products = rel * float(x.norm()) * screen.norms + _TINY[screen.name] * (float(x.abs().sum()) + screen.l1)
    return 2.0 * (products + u * (sh.abs() + products))


def _check(sae, screen: _Screen, x, k, threshold, reference) -> bool:
    """Whether the screen's bound holds against the full product (with room to spare) on
    ``x`` and two random vectors at its scale, and it finds ``reference``'s features on ``x``."""
    with torch.inference_mode():
        xs = [x]
        gen = torch.Generator().manual_seed(0)
        for _ in range(2):
            r = torch.randn(x.shape, generator=gen)
            xs.append(r * (x.norm() / r.norm().clamp_min(1e-30)))
        for v in xs:
            exact = v @ sae.W_enc.detach()
            vh = v.to(screen.w_t.dtype)
            sh = _half_scores(screen, vh)
            if not (torch.isfinite(vh).all() and torch.isfinite(sh).all()):
                continue
            if ((sh - exact).abs() > 0.25 * _bound(screen, v, sh)).any():
                return False
        found = _screened(sae, screen, x, k, threshold)
    if found is None:
        return True  # undecided here: it falls back to encode on such vectors
    return sorted(i for i, _ in found) == sorted(i for i, _ in reference)
