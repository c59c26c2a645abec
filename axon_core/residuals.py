"""Tokens → residuals at one hook point, one KV-cached forward per new token.

A *stepper* holds a model's key/value cache for one sequence. ``step(tokens)``
feeds only the new tokens and returns, for them, the activation at the hook
point (what the SAE reads), the logits of the last position (to sample the
next token) and the final LayerNorm's scale (for logit attribution).

Three steppers, chosen by :func:`make_stepper`:

- :class:`FastStepper` — GPT-2-architecture models: the forward pass written
  out over TransformerLens's own (processed) weights, with a preallocated KV
  cache and fused Q/K/V. It avoids TransformerLens's per-forward weight copies
  (the 154 MB ``W_U.T.contiguous()`` in ``Unembed`` and the attention
  re-stacking), so one step costs about what its weights take to read.
- :class:`~axon_core.architectures.FamilyStepper` — GPT-NeoX (Pythia), Gemma 2,
  Gemma 3 and models built from the same parts (rotary, RMSNorm, GQA, soft
  caps, sliding windows, parallel or gated MLPs), the same way.
- :class:`TransformerLensStepper` — any other model: TransformerLens's own
  forward with ``TransformerLensKeyValueCache`` and hooks, logits computed as
  one plain matmul from ``ln_final``'s output.

All three are tested against a full ``run_with_cache`` forward (tests/test_residuals.py).

Worked example::

    stepper = make_stepper(model, "blocks.8.hook_resid_pre")
    out = stepper.step(model.to_tokens("The capital of France is")[0])
    out.acts.shape        # [6, 768]: BOS + 5 prompt tokens
    nxt = out.last_logits.argmax()
    out = stepper.step(nxt[None])
    out.acts.shape        # [1, 768]: only the new position was computed
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from .architectures import FamilyStepper, FamilyWeights
from .stepping import HOOK, Edit, StepOutput

_ACTIVATIONS = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
}


def make_stepper(model: Any, hook_name: str, edit: Edit | None = None, weights: "FastWeights | None" = None,
                 capacity: int | None = None, extra_hooks: Sequence[str] = (),
                 extra_edits: Mapping[str, Edit] | None = None):
    """The fastest exact stepper for ``model`` reading ``hook_name``.

    Pass ``weights`` (from :func:`fast_weights_for`, built once per model)
    to avoid re-laying Q/K/V on every run, and ``capacity`` (positions the run
    will hold at most) so a short run does not reserve a whole context's KV cache.
    ``extra_hooks`` are more hook points read in the same forward (into
    ``StepOutput.extra``), ``extra_edits`` optional edits at them; a stepper
    class without ``supports_extra_hooks`` is then passed over.
    """
    extras = {"extra_hooks": tuple(extra_hooks), "extra_edits": extra_edits} if extra_hooks or extra_edits else {}
    hooks_ok = all(HOOK.match(h) for h in (hook_name, *extra_hooks))
    if hooks_ok:
        if isinstance(weights, FastWeights) or (weights is None and FastWeights.supports(model)):
            return FastStepper(weights or FastWeights.from_model(model), hook_name, edit, capacity, **extras)
        if (isinstance(weights, FamilyWeights) or (weights is None and FamilyWeights.supports(model))) and (
                not extras or getattr(FamilyStepper, "supports_extra_hooks", False)):
            family = weights or FamilyWeights.from_model(model)
            if not any(h.endswith("hook_resid_mid") for h in (hook_name, *extra_hooks)) or not family.parallel:
                return FamilyStepper(family, hook_name, edit, capacity, **extras)
    return TransformerLensStepper(model, hook_name, edit, **extras)


def fast_weights_for(model: Any):
    """The one-token-step weights of ``model`` (build once per model), or None
    where only TransformerLens's own forward can run it: :class:`FastWeights`
    for GPT-2, :class:`~axon_core.architectures.FamilyWeights` for the other
    families (Pythia, Gemma 2, Gemma 3, ...)."""
    if FastWeights.supports(model):
        return FastWeights.from_model(model)
    if FamilyWeights.supports(model):
        return FamilyWeights.from_model(model)
    return None


def _layer_norm(x: torch.Tensor, w: torch.Tensor | None, b: torch.Tensor | None, eps: float):
    """TransformerLens's LN/LNPre: centre, divide by sqrt(var + eps), then w·x + b if present."""
    x = x - x.mean(-1, keepdim=True)
    scale = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    x = x / scale
    if w is not None:
        x = x * w + b
    return x, scale


@dataclass
class FastWeights:
    """A GPT-2-architecture TransformerLens model's weights, arranged for one-token steps.

    Only Q/K/V are re-laid (fused into one [d_model, 3·H·d_head] matrix);
    everything else is a view of the model's own parameters.
    """

    n_heads: int
    d_head: int
    n_ctx: int
    eps: float
    attn_scale: float
    act: Callable[[torch.Tensor], torch.Tensor]
    W_E: torch.Tensor
    W_pos: torch.Tensor
    blocks: list[dict[str, torch.Tensor | None]]
    ln_final: tuple[torch.Tensor | None, torch.Tensor | None]
    W_U: torch.Tensor
    b_U: torch.Tensor

    @staticmethod
    def supports(model: Any) -> bool:
        """Whether ``model`` has the GPT-2 architecture this forward implements."""
        cfg = model.cfg
        return (
            cfg.original_architecture == "GPT2LMHeadModel"
            and cfg.normalization_type in ("LN", "LNPre")
            and cfg.positional_embedding_type == "standard"
            and cfg.act_fn in _ACTIVATIONS
            and not cfg.attn_only
            and not getattr(cfg, "parallel_attn_mlp", False)
            and getattr(cfg, "n_key_value_heads", None) in (None, cfg.n_heads)
            and getattr(cfg, "output_logits_soft_cap", -1.0) <= 0
            and getattr(cfg, "attn_scores_soft_cap", -1.0) <= 0
            and getattr(cfg, "n_devices", 1) == 1
        )

    @classmethod
    def from_model(cls, model: Any) -> "FastWeights":
        cfg = model.cfg

        def heads_to_cols(w: torch.Tensor) -> torch.Tensor:  # [H, d_model, d_head] → [d_model, H·d_head]
            return w.permute(1, 0, 2).reshape(w.shape[1], -1)

        blocks = []
        with torch.no_grad():
            for blk in model.blocks:
                att = blk.attn
                ln1 = getattr(blk.ln1, "w", None), getattr(blk.ln1, "b", None)
                ln2 = getattr(blk.ln2, "w", None), getattr(blk.ln2, "b", None)
                blocks.append(
                    {
                        "ln1_w": ln1[0],
                        "ln1_b": ln1[1],
                        "W_qkv": torch.cat([heads_to_cols(att.W_Q), heads_to_cols(att.W_K), heads_to_cols(att.W_V)], 1)
                        .contiguous()
                        .detach(),
                        "b_qkv": torch.cat([att.b_Q.flatten(), att.b_K.flatten(), att.b_V.flatten()]).detach(),
                        "W_O": att.W_O.detach().reshape(-1, cfg.d_model),
                        "b_O": att.b_O.detach(),
                        "ln2_w": ln2[0],
                        "ln2_b": ln2[1],
                        "W_in": blk.mlp.W_in.detach(),
                        "b_in": blk.mlp.b_in.detach(),
                        "W_out": blk.mlp.W_out.detach(),
                        "b_out": blk.mlp.b_out.detach(),
                    }
                )
        attn_scale = float(model.blocks[0].attn.attn_scale)
        return cls(
            n_heads=cfg.n_heads,
            d_head=cfg.d_head,
            n_ctx=cfg.n_ctx,
            eps=cfg.eps,
            attn_scale=attn_scale,
            act=_ACTIVATIONS[cfg.act_fn],
            W_E=model.W_E.detach(),
            W_pos=model.W_pos.detach(),
            blocks=blocks,
            ln_final=(getattr(model.ln_final, "w", None), getattr(model.ln_final, "b", None)),
            W_U=model.W_U.detach(),
            b_U=model.b_U.detach(),
        )


def _taps(extra_hooks: Sequence[str], extra_edits: Mapping[str, Edit] | None, n_layers: int, who: str):
    """``{(layer, site): [hook names]}`` for extra hooks, checked (and the edits' hooks among them)."""
    taps: dict[tuple[int, str], list[str]] = {}
    for name in extra_hooks:
        m = HOOK.match(name)
        if m is None or int(m.group(1)) >= n_layers:
            raise ValueError(f"{who} cannot read hook {name!r}")
        if name not in taps.setdefault((int(m.group(1)), m.group(2)), []):
            taps[(int(m.group(1)), m.group(2))].append(name)
    unread = set(extra_edits or {}) - set(extra_hooks)
    if unread:
        raise ValueError(f"edits at hooks not among extra_hooks: {sorted(unread)}")
    return taps


def _at_taps(names: list[str], edits: Mapping[str, Edit], x: torch.Tensor, out: dict) -> torch.Tensor:
    """Apply the extra edits at one hook point and record the result under each name."""
    for name in names:
        edit = edits.get(name)
        if edit is not None:
            x = edit(x)
    for name in names:
        out[name] = x
    return x


class FastStepper:
    """KV-cached GPT-2 forward over :class:`FastWeights` that reports one hook
    (``acts``) and optionally more (``extra_hooks`` → ``StepOutput.extra``), all
    in the same forward; ``extra_edits`` edit those extra hooks (after
    ``edit`` where a hook is both)."""

    supports_extra_hooks = True

    def __init__(self, weights: FastWeights, hook_name: str, edit: Edit | None = None,
                 capacity: int | None = None, extra_hooks: Sequence[str] = (),
                 extra_edits: Mapping[str, Edit] | None = None):
        m = HOOK.match(hook_name)
        if m is None:
            raise ValueError(f"FastStepper cannot read hook {hook_name!r}")
        self.w = weights
        self.layer, self.site = int(m.group(1)), m.group(2)
        self.edit = edit
        self.extra_hooks = tuple(dict.fromkeys(extra_hooks))
        self.extra_edits = dict(extra_edits or {})
        self.taps = _taps(self.extra_hooks, self.extra_edits, len(weights.blocks), "FastStepper")
        n_layers, h, dh = len(weights.blocks), weights.n_heads, weights.d_head
        dtype, device = weights.W_E.dtype, weights.W_E.device
        self.capacity = min(weights.n_ctx, capacity) if capacity else weights.n_ctx
        self.keys = torch.zeros(n_layers, h, self.capacity, dh, dtype=dtype, device=device)
        self.values = torch.zeros_like(self.keys)
        self.length = 0  # positions already in the cache

    def _at_hook(self, layer: int, site: str, x: torch.Tensor, out: dict) -> torch.Tensor:
        if layer == self.layer and site == self.site:
            if self.edit is not None:
                x = self.edit(x)
            out["acts"] = x
        if self.taps:
            names = self.taps.get((layer, site))
            if names:
                x = _at_taps(names, self.extra_edits, x, out)
        return x

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> StepOutput:
        w, n = self.w, tokens.shape[0]
        start, end = self.length, self.length + n
        if end > self.capacity:
            raise ValueError(f"sequence of {end} tokens exceeds this stepper's capacity of {self.capacity} "
                             f"(the model's context is {w.n_ctx})")
        h, dh = w.n_heads, w.d_head
        out: dict[str, torch.Tensor] = {}
        x = w.W_E[tokens] + w.W_pos[start:end]
        mask = None
        if n > 1:  # query i (absolute start+i) sees keys 0..start+i
            q_pos = torch.arange(start, end, device=x.device)[:, None]
            mask = torch.arange(end, device=x.device)[None, :] > q_pos
        for layer, b in enumerate(w.blocks):
            x = self._at_hook(layer, "hook_resid_pre", x, out)
            hn, _ = _layer_norm(x, b["ln1_w"], b["ln1_b"], w.eps)
            qkv = torch.addmm(b["b_qkv"], hn, b["W_qkv"]).view(n, 3, h, dh)
            q, k, v = qkv.unbind(1)  # each [n, H, dh]
            self.keys[layer, :, start:end] = k.transpose(0, 1)
            self.values[layer, :, start:end] = v.transpose(0, 1)
            scores = q.transpose(0, 1) @ self.keys[layer, :, :end].transpose(1, 2) / w.attn_scale
            if mask is not None:
                scores = scores.masked_fill(mask, float("-inf"))
            z = (scores.softmax(-1) @ self.values[layer, :, :end]).transpose(0, 1)  # [n, H, dh]
            z = self._at_hook(layer, "attn.hook_z", z, out)
            attn_out = torch.addmm(b["b_O"], z.reshape(n, h * dh), b["W_O"])
            attn_out = self._at_hook(layer, "hook_attn_out", attn_out, out)
            x = self._at_hook(layer, "hook_resid_mid", x + attn_out, out)
            hn, _ = _layer_norm(x, b["ln2_w"], b["ln2_b"], w.eps)
            mlp_out = torch.addmm(b["b_out"], w.act(torch.addmm(b["b_in"], hn, b["W_in"])), b["W_out"])
            mlp_out = self._at_hook(layer, "hook_mlp_out", mlp_out, out)
            x = self._at_hook(layer, "hook_resid_post", x + mlp_out, out)
        self.length = end
        normed, scales = _layer_norm(x, *w.ln_final, w.eps)
        logits = torch.addmm(w.b_U, normed[-1:], w.W_U)[0]
        return StepOutput(acts=out["acts"].clone(), last_logits=logits, final_scale=scales[:, 0],
                          extra={name: out[name].clone() for name in self.extra_hooks})


class TransformerLensStepper:
    """TransformerLens's own KV-cached forward, for architectures FastStepper doesn't cover."""

    supports_extra_hooks = True

    def __init__(self, model: Any, hook_name: str, edit: Edit | None = None,
                 extra_hooks: Sequence[str] = (), extra_edits: Mapping[str, Edit] | None = None):
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        self.model, self.hook_name, self.edit = model, hook_name, edit
        self.extra_hooks = tuple(dict.fromkeys(extra_hooks))
        self.extra_edits = dict(extra_edits or {})
        unread = set(self.extra_edits) - set(self.extra_hooks)
        if unread:
            raise ValueError(f"edits at hooks not among extra_hooks: {sorted(unread)}")
        self.cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, batch_size=1)
        self.length = 0

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> StepOutput:
        model, got = self.model, {}
        if self.length + tokens.shape[0] > model.cfg.n_ctx:
            raise ValueError(f"sequence exceeds the model's context of {model.cfg.n_ctx}")

        def grab(name, edit=None):
            def hook(act, hook):
                if edit is not None:
                    act = edit(act)
                got[name] = act
                return act

            return hook

        hooks = [(self.hook_name, grab("acts", self.edit)), ("ln_final.hook_normalized", grab("final"))]
        hooks += [(name, grab(("extra", name), self.extra_edits.get(name))) for name in self.extra_hooks]
        if model.cfg.normalization_type in ("LN", "LNPre", "RMS", "RMSPre"):
            hooks.append(("ln_final.hook_scale", grab("scale")))
        batch = tokens[None].to(model.cfg.device)
        # An explicit all-ones mask: without it a generated <|endoftext|> (pad = eos) is masked.
        with model.hooks(fwd_hooks=hooks):
            model(batch, return_type=None, past_kv_cache=self.cache, attention_mask=torch.ones_like(batch))
        self.length += tokens.shape[0]
        final = got["final"][0, -1]
        logits = final @ model.W_U + model.b_U
        scale = got["scale"][0, :, 0] if "scale" in got else torch.ones(tokens.shape[0])
        return StepOutput(acts=got["acts"][0].clone(), last_logits=logits, final_scale=scale,
                          extra={name: got[("extra", name)][0].clone() for name in self.extra_hooks})
