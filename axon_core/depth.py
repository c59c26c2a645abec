"""Depth: how features at one layer feed features at a later layer.

Two answers for features of SAEs at layers a < b of one model:

- :func:`virtual_weights` — a property of the two SAEs alone: how strongly
  feature f's decoder direction at layer a writes along feature g's encoder
  direction at layer b, ``W_dec_a[f] · W_enc_b[:, g]``. It is the direct path
  through the residual stream only (no block between a and b, no LayerNorm, no
  biases), so it says what *could* connect, on any text.
- :func:`causal_check` — measured on one token of one run: ablate each of the
  token's top features at layer a, one at a time (subtract its decoder
  contribution ``a_f · W_dec_a[f]`` at that hook, at that position only), re-run
  only that position from layer a up (the earlier positions' keys and values are
  reused: what they hold cannot depend on a later position), and report how
  much every later-layer feature on that token changed, with its sign.
  The B ablations go through the layers as one batch of B+1 copies of the
  position (the first copy unablated: the baseline).

Worked example (GPT-2 small, ``gpt2-small-res-jb``; the numbers are made up)::

    l2, l8 = (LayerSae.of(pairs.get("gpt2-small-res-jb", f"blocks.{i}.hook_resid_pre")) for i in (2, 8))
    virtual_weights(l2, l8, [101, 7], [9001, 42], threshold=0.05)
    # tensor([[ 0.31, 0.00],          W_dec_2[101]·W_enc_8[:, 9001] = 0.31;
    #         [ 0.00,-0.12]])         |0.02| < 0.05 is shown as 0
    check = causal_check(model, run_tokens(steps, bos), position=6, source=l2, targets=[l8], k=8)
    check.features                    # the 8 strongest layer-2 features at position 6 (ablated)
    check.targets[0].delta[0]         # how each layer-8 feature moved when feature features[0] was ablated
    [e for e in check.edges(min_abs=0.5)][:1]
    # [CausalEdge(source_layer=2, source=101, target_layer=8, target=9001, delta=-2.4)]

The fast path is exact against TransformerLens (tests/test_depth.py compares
each ablation with ``run_with_hooks`` subtracting the same vector at the same
position, to 1e-4); models the fast GPT-2 forward does not cover use
TransformerLens's own forward on the prefix, batched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from .features import top_features
from .generation import LayerSae, hook_layer
from .residuals import FastStepper, FastWeights, _layer_norm

__all__ = ["virtual_weights", "virtual_edges", "causal_check", "CausalCheck", "TargetEffect",
           "CausalEdge", "run_tokens", "hook_order", "hook_layer", "LayerSae"]

# Hook points of one block in the order the forward reaches them.
_SITES = ("hook_resid_pre", "attn.hook_z", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post")
_POINT = re.compile(r"^blocks\.(\d+)\.(" + "|".join(re.escape(s) for s in _SITES) + r")$")
_RESIDUAL_SITES = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post")


def hook_order(hook_name: str) -> tuple[int, int]:
    """Where a hook point sits in the forward, as (block, step within the block);
    ``blocks.L.hook_resid_post`` and ``blocks.L+1.hook_resid_pre`` hold the same
    residual but sort apart, the former first."""
    m = _POINT.match(hook_name)
    if m is None:
        raise ValueError(f"not a block's hook point: {hook_name!r}")
    return int(m.group(1)), _SITES.index(m.group(2))


def _sae_of(x: Any):
    return getattr(x, "sae", x)


# --------------------------------------------------------------------------- virtual weights


@torch.inference_mode()
def virtual_weights(source: Any, target: Any, source_features: Sequence[int], target_features: Sequence[int],
                    threshold: float = 0.0) -> torch.Tensor:
    """``W_dec_a[f] · W_enc_b[:, g]`` for f in ``source_features`` (rows) and g in
    ``target_features`` (columns), entries with ``|v| < threshold`` set to 0.

    ``source`` and ``target`` are :class:`LayerSae` (or bare SAEs) of one model
    writing / reading the same space (e.g. residual-stream SAEs); the source must
    come before the target when both name their hook points.

    >>> # one feature whose decoder row is exactly the target's encoder column 3
    >>> virtual_weights(a, b, [0], [3, 4])   # = [[|W_enc_b[:, 3]|², W_enc_b[:, 3]·W_enc_b[:, 4]]]
    """
    _check_order(source, target)
    w_dec, w_enc = _sae_of(source).W_dec, _sae_of(target).W_enc
    if w_dec.shape[-1] != w_enc.shape[0]:
        raise ValueError(f"the source SAE writes {w_dec.shape[-1]} dimensions, the target reads {w_enc.shape[0]}")
    rows = w_dec[torch.as_tensor(list(source_features), dtype=torch.long, device=w_dec.device)]
    cols = w_enc[:, torch.as_tensor(list(target_features), dtype=torch.long, device=w_enc.device)]
    v = rows.to(cols.dtype) @ cols
    if threshold > 0:
        v = torch.where(v.abs() >= threshold, v, torch.zeros_like(v))
    return v


def virtual_edges(source: Any, target: Any, source_features: Sequence[int], target_features: Sequence[int],
                  threshold: float) -> list[tuple[int, int, float]]:
    """``(f, g, weight)`` for every pair whose virtual weight is at least ``threshold`` in size,
    strongest first."""
    v = virtual_weights(source, target, source_features, target_features, threshold)
    found = [(int(source_features[i]), int(target_features[j]), float(v[i, j]))
             for i, j in (v.abs() >= max(threshold, 1e-30)).nonzero().tolist()]
    return sorted(found, key=lambda e: -abs(e[2]))


def _check_order(source: Any, target: Any) -> None:
    a, b = getattr(source, "hook_name", None), getattr(target, "hook_name", None)
    if a and b and _POINT.match(a) and _POINT.match(b) and hook_order(a) >= hook_order(b):
        raise ValueError(f"the source SAE ({a}) must come before the target SAE ({b})")


# --------------------------------------------------------------------------- causal check


@dataclass(frozen=True)
class CausalEdge:
    """Ablating ``source`` (at ``source_layer``) moved ``target`` (at ``target_layer``) by ``delta``."""

    source_layer: int | None
    source: int
    target_layer: int | None
    target: int
    delta: float  # ablated − baseline activation: < 0, the source feature was helping it fire


@dataclass(frozen=True, eq=False)
class TargetEffect:
    """One later SAE's features on the token, and how each ablation moved them."""

    hook_name: str
    layer: int | None
    features: tuple[int, ...]  # the baseline's top features, then others an ablation moved most
    baseline: tuple[float, ...]  # their activations with nothing ablated
    delta: torch.Tensor  # [n_source, n_target]: activation with source feature i ablated − baseline


@dataclass(frozen=True, eq=False)
class CausalCheck:
    """What :func:`causal_check` measured at one position."""

    position: int
    source_hook: str
    source_layer: int | None
    features: tuple[int, ...]  # the source features ablated, one at a time
    activations: tuple[float, ...]  # their activations at the position
    targets: tuple[TargetEffect, ...]

    def edges(self, min_abs: float = 0.0) -> list[CausalEdge]:
        """Every (source, target) pair whose activation moved by at least ``min_abs``, largest first."""
        found = []
        for t in self.targets:
            for i, j in (t.delta.abs() >= max(min_abs, 1e-30)).nonzero().tolist():
                found.append(CausalEdge(self.source_layer, self.features[i], t.layer, t.features[j],
                                        float(t.delta[i, j])))
        return sorted(found, key=lambda e: -abs(e.delta))


def run_tokens(steps: Iterable[Any], bos_token_id: int | None) -> torch.Tensor:
    """A run's model input from its :class:`~axon_core.generation.TokenStep` s
    (BOS, position 0, is not among the steps; pass None for a run without BOS)."""
    steps = sorted(steps, key=lambda s: s.position)
    ids = [int(s.token_id) for s in steps]
    first = steps[0].position if steps else 0
    if first == 1:
        if bos_token_id is None:
            raise ValueError("the run starts at position 1: pass its BOS token id")
        ids = [int(bos_token_id)] + ids
    elif first != 0:
        raise ValueError(f"the run's first step is at position {first}")
    if [s.position for s in steps] != list(range(first, first + len(steps))):
        raise ValueError("the run's steps are not consecutive positions")
    return torch.tensor(ids, dtype=torch.long)


@torch.inference_mode()
def causal_check(model: Any, tokens: torch.Tensor, position: int, source: Any, targets: Sequence[Any],
                 features: Sequence[int] | None = None, k: int = 8, target_k: int = 12,
                 threshold: float = 0.0, weights: FastWeights | None = None,
                 target_features: Mapping[str, Sequence[int]] | None = None,
                 edits: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None) -> CausalCheck:
    """Ablate each of the token's top features at the ``source`` SAE, one at a
    time, and measure every ``targets`` SAE's features on the same token.

    ``tokens``: the run's model input (BOS first where the run has one: see
    :func:`run_tokens`); ``position``: the token to test (an index into
    ``tokens``; later tokens are not needed and not read). ``source`` and
    ``targets``: :class:`LayerSae` (or LoadedPairs) of ``model``; the source must
    be a residual-stream SAE (``hook_resid_pre/mid/post``) and every target
    come after it. ``features``: the source features to ablate (default: its
    ``k`` strongest at the position, above ``threshold``). For each target the
    reported features are its ``target_k`` strongest in the baseline (above
    ``threshold``), then up to ``target_k`` more that the ablations moved most;
    ``target_features`` (``{hook_name: [feature, ...]}``) names them instead.
    ``weights``: the model's :class:`~axon_core.residuals.FastWeights` (built
    here when the model has the GPT-2 architecture and none is given).
    ``edits``: the run's own edits (steering), ``{hook_name: edit}`` as the
    run applied them, so the check sees the residuals the run saw.
    """
    src = LayerSae.of(source)
    tgts = [LayerSae.of(t) for t in targets]
    m = _POINT.match(src.hook_name)
    if m is None or m.group(2) not in _RESIDUAL_SITES:
        raise ValueError(f"the causal check ablates residual-stream SAEs, not {src.hook_name!r}")
    for t in tgts:
        _check_order(src, t)
        hook_order(t.hook_name)
    tokens = torch.as_tensor(tokens, dtype=torch.long).flatten()
    if not 0 <= position < tokens.shape[0]:
        raise ValueError(f"position {position} is outside the run's {tokens.shape[0]} tokens")
    if weights is None and FastWeights.supports(model):
        weights = FastWeights.from_model(model)
    prefix = tokens[: position + 1]
    edits = {h: e for h, e in (edits or {}).items() if e is not None}
    for h in edits:
        hook_order(h)

    # 1. The source activation at the position (and, on the fast path, the earlier positions' KV cache).
    stepper = None
    if isinstance(weights, FastWeights):
        prefix = prefix.to(weights.W_E.device)
        others = {h: e for h, e in edits.items() if h != src.hook_name}
        stepper = FastStepper(weights, src.hook_name, edits.get(src.hook_name), capacity=position + 1,
                              extra_hooks=list(others), extra_edits=others)
        x = stepper.step(prefix).acts[position]
    else:
        prefix = prefix.to(model.cfg.device)
        x = _tl_acts(model, prefix, src.hook_name, edits)[position]

    # 2. What each ablation subtracts: the SAE's own decode of the code with and without feature f.
    sae = src.sae
    code = sae.encode(x[None].to(sae.dtype))[0]  # [d_sae]
    if features is None:
        chosen = top_features(code, k, threshold)
        features = [i for i, _ in chosen]
    features = [int(f) for f in features]
    n = len(features)
    # decode(one feature's code) − decode(nothing): a_f·W_dec[f] for a linear decoder, and
    # whatever the SAE's own output scaling makes of it otherwise. Row 0: nothing removed.
    codes = torch.zeros(n + 1, code.shape[-1], dtype=code.dtype, device=code.device)
    if n:
        idx = torch.tensor(features, device=codes.device)
        codes[torch.arange(1, n + 1, device=codes.device), idx] = code[idx]
    removed = sae.decode(codes) - sae.decode(codes[:1])  # [n+1, d]: row 0 is zero
    xs = x[None] - removed.to(x.dtype).reshape(n + 1, *x.shape)

    # 3. Only this position, from the source up: one batch of n+1 copies.
    if stepper is not None:
        got = _resume(weights, stepper, position, xs, src.hook_name, [t.hook_name for t in tgts], edits)
    else:
        got = _tl_resume(model, prefix, position, xs, src.hook_name, [t.hook_name for t in tgts], edits)

    # 4. Each target SAE's features, baseline (row 0) against each ablation.
    effects = []
    for t in tgts:
        enc = t.sae.encode(got[t.hook_name].to(t.sae.dtype))  # [n+1, d_sae]
        delta = enc[1:] - enc[0]
        if target_features is not None and t.hook_name in target_features:
            chosen = [int(i) for i in target_features[t.hook_name]]
        else:
            chosen = [i for i, _ in top_features(enc[0], target_k, threshold)]
        if n and not (target_features is not None and t.hook_name in target_features):
            moved = delta.abs().amax(0)
            extra = [i for i, v in top_features(moved, target_k + len(chosen), max(threshold, 0.0))
                     if i not in set(chosen)][:target_k]
            chosen += extra
        idx = torch.tensor(chosen, dtype=torch.long, device=enc.device)
        effects.append(TargetEffect(
            hook_name=t.hook_name, layer=t.layer, features=tuple(chosen),
            baseline=tuple(enc[0, idx].tolist()), delta=delta[:, idx].cpu(),
        ))
    return CausalCheck(
        position=int(position), source_hook=src.hook_name, source_layer=src.layer,
        features=tuple(features), activations=tuple(code[features].tolist()) if n else (),
        targets=tuple(effects),
    )


def _resume(w: FastWeights, stepper: FastStepper, p: int, xs: torch.Tensor, source_hook: str,
            target_hooks: list[str], edits: Mapping[str, Callable] | None = None) -> dict[str, torch.Tensor]:
    """Position ``p`` for B rows from the source hook point up, attending to
    the stepper's cached keys/values of positions < p and to its own; returns
    each target hook's activation [B, *shape] (after ``edits`` at hook points
    past the source). Same arithmetic as :meth:`FastStepper.step`."""
    start_layer, start_site = hook_order(source_hook)
    taps = {hook_order(h): h for h in target_hooks}
    if not taps:
        return {}
    last = max(taps)
    after = {hook_order(h): e for h, e in (edits or {}).items() if hook_order(h) > hook_order(source_hook)}
    got: dict[str, torch.Tensor] = {}
    n, h, dh = xs.shape[0], w.n_heads, w.d_head

    def tap(layer: int, site: str, value: torch.Tensor) -> bool:
        """Record a target's activation; True once the last target is read."""
        point = (layer, _SITES.index(site))
        name = taps.get(point)
        if name is not None:
            got[name] = value
        return point >= last

    def edit(layer: int, site: str, value: torch.Tensor) -> torch.Tensor:
        e = after.get((layer, _SITES.index(site))) if after else None
        return value if e is None else e(value)

    x = xs
    for layer in range(start_layer, len(w.blocks)):
        b = w.blocks[layer]
        if layer == start_layer and start_site == _SITES.index("hook_resid_post"):
            continue  # the source is this block's output: the next block starts from it
        if not (layer == start_layer and start_site == _SITES.index("hook_resid_mid")):
            x = edit(layer, "hook_resid_pre", x)
            if tap(layer, "hook_resid_pre", x):
                break
            hn, _ = _layer_norm(x, b["ln1_w"], b["ln1_b"], w.eps)
            q, k, v = torch.addmm(b["b_qkv"], hn, b["W_qkv"]).view(n, 3, h, dh).unbind(1)  # each [B, H, dh]
            past_k, past_v = stepper.keys[layer, :, :p], stepper.values[layer, :, :p]  # [H, p, dh]
            q_h = q.transpose(0, 1)  # [H, B, dh]
            scores = torch.cat([q_h @ past_k.transpose(1, 2), (q_h * k.transpose(0, 1)).sum(-1, keepdim=True)], -1)
            probs = (scores / w.attn_scale).softmax(-1)  # [H, B, p+1]: the cached positions, then its own
            z = (probs[..., :p] @ past_v + probs[..., p:] * v.transpose(0, 1)).transpose(0, 1)  # [B, H, dh]
            z = edit(layer, "attn.hook_z", z)
            if tap(layer, "attn.hook_z", z):
                break
            attn_out = torch.addmm(b["b_O"], z.reshape(n, h * dh), b["W_O"])
            attn_out = edit(layer, "hook_attn_out", attn_out)
            if tap(layer, "hook_attn_out", attn_out):
                break
            x = x + attn_out
        if not (layer == start_layer and start_site == _SITES.index("hook_resid_mid")):
            x = edit(layer, "hook_resid_mid", x)
        if tap(layer, "hook_resid_mid", x):
            break
        hn, _ = _layer_norm(x, b["ln2_w"], b["ln2_b"], w.eps)
        mlp_out = torch.addmm(b["b_out"], w.act(torch.addmm(b["b_in"], hn, b["W_in"])), b["W_out"])
        mlp_out = edit(layer, "hook_mlp_out", mlp_out)
        if tap(layer, "hook_mlp_out", mlp_out):
            break
        x = edit(layer, "hook_resid_post", x + mlp_out)
        if tap(layer, "hook_resid_post", x):
            break
    return got


def _edit_hooks(edits: Mapping[str, Callable] | None) -> list:
    def hook_for(e):
        def hook(act, hook):
            return e(act)
        return hook

    return [(h, hook_for(e)) for h, e in (edits or {}).items()]


def _tl_acts(model: Any, prefix: torch.Tensor, hook_name: str, edits: Mapping[str, Callable] | None = None):
    """The activation at ``hook_name`` for every position of ``prefix`` (TransformerLens's forward)."""
    got = {}

    def grab(act, hook):
        got["x"] = act[0]

    model.run_with_hooks(prefix[None], return_type=None, fwd_hooks=_edit_hooks(edits) + [(hook_name, grab)],
                         attention_mask=torch.ones_like(prefix[None]))
    return got["x"]


def _tl_resume(model: Any, prefix: torch.Tensor, p: int, xs: torch.Tensor, source_hook: str,
               target_hooks: list[str], edits: Mapping[str, Callable] | None = None) -> dict[str, torch.Tensor]:
    """:func:`_resume` for any model: TransformerLens on the whole prefix, B copies
    in one batch, the source hook set to ``xs`` at position ``p``."""
    got: dict[str, torch.Tensor] = {}
    batch = prefix[None].expand(xs.shape[0], -1)

    def put(act, hook):
        act = act.clone()
        act[:, p] = xs.to(act.dtype)
        return act

    def grab(name):
        def hook(act, hook):
            got[name] = act[:, p].clone()
        return hook

    hooks = _edit_hooks(edits) + [(source_hook, put)] + [(h, grab(h)) for h in target_hooks]
    model.run_with_hooks(batch, return_type=None, fwd_hooks=hooks, attention_mask=torch.ones_like(batch))
    return got

