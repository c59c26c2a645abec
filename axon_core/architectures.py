"""One-token KV-cached forward for the non-GPT-2 families AXON serves:
GPT-NeoX (Pythia), Gemma 2 and Gemma 3 — and any TransformerLens model built
from the same parts.

:class:`FamilyWeights` reads a TransformerLens ``HookedTransformer``'s own
(processed) weights once and lays them out for one-position steps;
:class:`FamilyStepper` runs the forward over them with a KV cache. It
implements exactly what TransformerLens's blocks do, flag by flag:

- LayerNorm / RMSNorm, with or without (folded) weights, and Gemma's norms
  before *and* after attention and MLP (``use_normalization_before_and_after``);
- rotary embeddings (GPT-NeoX halves or GPT-J adjacent pairs, partial
  ``rotary_dim``, a separate base for local layers), using TransformerLens's own
  sin/cos tables; keys are cached already rotated;
- grouped-query attention (``n_key_value_heads``): K/V are computed and cached
  per KV head and never expanded;
- per-head RMS norms of queries and keys (``use_qk_norm``, Gemma 3);
- attention-score and output-logit soft caps (Gemma 2);
- sliding-window ("local") layers: a one-token step reads only the last
  ``window_size`` keys;
- parallel attention + MLP (GPT-NeoX) and gated MLPs (Gemma).

Like :class:`~axon_core.residuals.FastStepper` it avoids TransformerLens's
per-forward weight copies (``W_U.T.contiguous()``, ``W_gate.T.contiguous()``,
the GQA ``repeat_interleave`` of K/V, re-rotating every cached key), so a step
costs about what its weights take to read. It is tested against a full
``run_with_cache`` forward (tests/test_families.py). Anything it does not
implement makes :meth:`FamilyWeights.supports` false, and the model falls back
to TransformerLens's own KV-cached forward.

Worked example::

    weights = FamilyWeights.from_model(model)            # once per model
    stepper = FamilyStepper(weights, "blocks.3.hook_resid_post")
    out = stepper.step(tokens)                            # StepOutput, as FastStepper's
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .stepping import HOOK, Edit, StepOutput

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
}
_INITIAL_CAPACITY = 256  # KV positions allocated at first; doubled as a run grows


def _same_plain_norm(a: "Norm | None", b: "Norm | None") -> bool:
    """Both norms compute the same thing and have no weights (so one output serves both)."""
    return (a is not None and b is not None and a.w is None and a.b is None and b.w is None
            and b.b is None and a.kind == b.kind and a.eps == b.eps)


def _softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    return x if cap is None or cap <= 0 else cap * torch.tanh(x / cap)


@dataclass
class Norm:
    """One TransformerLens norm: ``kind`` "LN" (centre, then scale) or "RMS"
    (scale only); ``w``/``b`` None where TransformerLens folded them away."""

    kind: str
    eps: float
    w: torch.Tensor | None = None
    b: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "LN":
            x = x - x.mean(-1, keepdim=True)
        scale = (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
        x = x / scale
        if self.w is not None:
            x = x * self.w
        if self.b is not None:
            x = x + self.b
        return x, scale

    @classmethod
    def of(cls, module: Any, eps: float) -> "Norm | None":
        """The norm ``module`` computes, or None for an identity."""
        name = type(module).__name__
        kinds = {"LayerNorm": "LN", "LayerNormPre": "LN", "RMSNorm": "RMS", "RMSNormPre": "RMS"}
        if name not in kinds:
            return None
        w, b = getattr(module, "w", None), getattr(module, "b", None)
        return cls(kinds[name], float(getattr(module, "eps", eps)),
                   None if w is None else w.detach(), None if b is None else b.detach())


@dataclass
class FamilyBlock:
    ln1: Norm | None
    W_qkv: torch.Tensor  # [d_model, (H + 2·Hkv)·d_head]
    b_qkv: torch.Tensor
    q_norm: Norm | None
    k_norm: Norm | None
    rot: int  # index into FamilyWeights.rotary, or -1
    window: int | None  # sliding window (local layers), None = global
    attn_scale: float
    W_O: torch.Tensor  # [H·d_head, d_model]
    b_O: torch.Tensor
    ln1_post: Norm | None
    ln2: Norm | None
    W_in: torch.Tensor  # [d_model, d_mlp] or, gated, [d_model, 2·d_mlp] (gate | in)
    b_in: torch.Tensor
    W_out: torch.Tensor
    b_out: torch.Tensor
    ln2_post: Norm | None
    # Parallel blocks whose two norms are the same weightless norm (GPT-NeoX after
    # fold_ln): Q/K/V and the MLP input read the same normalised residual, so they
    # are one matrix [d_model, (H + 2·Hkv)·d_head + d_mlp] (W_qkv and W_in are views of it).
    W_qkv_in: torch.Tensor | None = None
    b_qkv_in: torch.Tensor | None = None


@dataclass
class FamilyWeights:
    """A TransformerLens model's weights, laid out for one-token steps.

    Q/K/V are fused into one matrix (and a gated MLP's gate and input into
    another); everything else is a view of the model's own parameters.
    """

    n_heads: int
    n_kv_heads: int
    d_head: int
    n_ctx: int
    rotary_dim: int
    rotary_adjacent_pairs: bool
    gated: bool
    parallel: bool
    attn_soft_cap: float | None
    logit_soft_cap: float | None
    act: Callable[[torch.Tensor], torch.Tensor]
    W_E: torch.Tensor
    W_pos: torch.Tensor | None
    blocks: list[FamilyBlock]
    ln_final: Norm | None
    W_U: torch.Tensor
    b_U: torch.Tensor
    rotary: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (cos, sin) [n_ctx, rotary_dim]

    @staticmethod
    def why_not(model: Any) -> str | None:
        """None if this forward implements ``model`` exactly, else the first reason it does not."""
        from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

        cfg = model.cfg
        checks = [
            (cfg.original_architecture not in POST_NORM_ARCHITECTURES, "post-norm architecture"),
            (cfg.normalization_type in ("LN", "LNPre", "RMS", "RMSPre"), "normalization"),
            (cfg.positional_embedding_type in ("standard", "rotary"), "positional embedding"),
            (cfg.act_fn in _ACTIVATIONS, f"activation {cfg.act_fn}"),
            (cfg.attention_dir == "causal", "bidirectional attention"),
            (not cfg.attn_only, "attention-only"),
            (not getattr(cfg, "num_experts", None), "mixture of experts"),
            (not getattr(cfg, "load_in_4bit", False), "4-bit weights"),
            (getattr(cfg, "n_devices", 1) == 1, "several devices"),
            (not cfg.use_attn_result and not cfg.use_split_qkv_input and not cfg.use_attn_in, "split hooks"),
            (not getattr(cfg, "post_embedding_ln", False), "post-embedding LayerNorm"),
            (getattr(cfg, "clip_qkv", None) is None, "clip_qkv"),
            (not getattr(cfg, "use_logn_attn", False), "log-n attention"),
            (not getattr(cfg, "use_dynamic_ntk_rope", False), "dynamic NTK rope"),
            (not getattr(cfg, "use_NTK_by_parts_rope", False), "NTK-by-parts rope"),
            (not getattr(cfg, "use_yarn_rope", False), "YaRN rope"),
            (getattr(cfg, "rotary_scaling_factor", 1.0) == 1.0, "rotary scaling"),
            (not getattr(cfg, "use_attention_sinks", False), "attention sinks"),
            (not getattr(cfg, "ungroup_grouped_query_attention", False), "ungrouped GQA"),
            (cfg.original_architecture not in ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM"),
             "OLMo q/k norms"),
            (not (cfg.use_normalization_before_and_after and not str(cfg.normalization_type).startswith("RMS")),
             "LayerNorm after sublayers"),
        ]
        for ok, why in checks:
            if not ok:
                return why
        if cfg.gated_mlp and not hasattr(model.blocks[0].mlp, "W_gate"):
            return "gated MLP without W_gate"
        if cfg.gated_mlp and type(model.blocks[0].mlp).__name__ != "GatedMLP":
            return f"MLP {type(model.blocks[0].mlp).__name__}"
        if not cfg.gated_mlp and type(model.blocks[0].mlp).__name__ != "MLP":
            return f"MLP {type(model.blocks[0].mlp).__name__}"
        return None

    @classmethod
    def supports(cls, model: Any) -> bool:
        return cls.why_not(model) is None

    @classmethod
    def from_model(cls, model: Any) -> "FamilyWeights":
        cfg = model.cfg
        why = cls.why_not(model)
        if why is not None:
            raise ValueError(f"FamilyStepper cannot run {cfg.model_name}: {why}")
        h, dh = cfg.n_heads, cfg.d_head
        hkv = cfg.n_key_value_heads or h
        rotary = cfg.positional_embedding_type == "rotary"
        tables: dict[float, int] = {}
        rotary_list: list[tuple[torch.Tensor, torch.Tensor]] = []

        def cols(w: torch.Tensor) -> torch.Tensor:  # [H, d_model, d_head] → [d_model, H·d_head]
            return w.permute(1, 0, 2).reshape(w.shape[1], -1)

        blocks = []
        with torch.no_grad():
            for blk in model.blocks:
                att = blk.attn
                grouped = hasattr(att, "_W_K")
                W_K = att._W_K if grouped else att.W_K
                W_V = att._W_V if grouped else att.W_V
                b_K = att._b_K if grouped else att.b_K
                b_V = att._b_V if grouped else att.b_V
                rot = -1
                if rotary:
                    base = float(att._rotary_base())
                    if base not in tables:
                        sin, cos = att.calculate_sin_cos_rotary(cfg.rotary_dim, cfg.n_ctx, base=base, dtype=cfg.dtype)
                        tables[base] = len(rotary_list)
                        rotary_list.append((cos.to(W_K.device), sin.to(W_K.device)))
                    rot = tables[base]
                mlp = blk.mlp
                if cfg.gated_mlp:
                    W_in = torch.cat([mlp.W_gate, mlp.W_in], 1).contiguous()
                else:
                    W_in = mlp.W_in.detach()
                block = (
                    FamilyBlock(
                        ln1=Norm.of(blk.ln1, cfg.eps),
                        W_qkv=torch.cat([cols(att.W_Q), cols(W_K), cols(W_V)], 1).contiguous().detach(),
                        b_qkv=torch.cat([att.b_Q.flatten(), b_K.flatten(), b_V.flatten()]).detach(),
                        q_norm=Norm.of(att.q_norm, cfg.eps) if cfg.use_qk_norm else None,
                        k_norm=Norm.of(att.k_norm, cfg.eps) if cfg.use_qk_norm else None,
                        rot=rot,
                        window=int(cfg.window_size) if att.attn_type == "local" else None,
                        attn_scale=float(att.attn_scale),
                        W_O=att.W_O.detach().reshape(h * dh, cfg.d_model),
                        b_O=att.b_O.detach(),
                        ln1_post=Norm.of(blk.ln1_post, cfg.eps) if cfg.use_normalization_before_and_after else None,
                        ln2=Norm.of(blk.ln2, cfg.eps),
                        W_in=W_in.detach(),
                        b_in=mlp.b_in.detach(),
                        W_out=mlp.W_out.detach(),
                        b_out=mlp.b_out.detach(),
                        ln2_post=Norm.of(blk.ln2_post, cfg.eps) if cfg.use_normalization_before_and_after else None,
                    )
                )
                if cfg.parallel_attn_mlp and not cfg.gated_mlp and _same_plain_norm(block.ln1, block.ln2):
                    n_qkv = block.W_qkv.shape[1]
                    block.W_qkv_in = torch.cat([block.W_qkv, block.W_in], 1).contiguous()
                    block.b_qkv_in = torch.cat([block.b_qkv, block.b_in])
                    block.W_qkv, block.W_in = block.W_qkv_in[:, :n_qkv], block.W_qkv_in[:, n_qkv:]
                blocks.append(block)
        soft = lambda c: float(c) if c is not None and c > 0 else None  # noqa: E731
        return cls(
            n_heads=h,
            n_kv_heads=hkv,
            d_head=dh,
            n_ctx=cfg.n_ctx,
            rotary_dim=int(cfg.rotary_dim or 0) if rotary else 0,
            rotary_adjacent_pairs=bool(cfg.rotary_adjacent_pairs),
            gated=bool(cfg.gated_mlp),
            parallel=bool(cfg.parallel_attn_mlp),
            attn_soft_cap=soft(cfg.attn_scores_soft_cap),
            logit_soft_cap=soft(cfg.output_logits_soft_cap),
            act=_ACTIVATIONS[cfg.act_fn],
            W_E=model.W_E.detach(),
            W_pos=None if rotary else model.W_pos.detach(),
            blocks=blocks,
            ln_final=Norm.of(model.ln_final, cfg.eps),
            W_U=model.W_U.detach(),
            b_U=model.b_U.detach(),
            rotary=rotary_list,
        )

    def bytes_per_token(self) -> int:
        """Bytes of weights one step reads (blocks + unembedding): the read floor's numerator."""
        total = self.W_U.numel() * self.W_U.element_size()
        for b in self.blocks:
            fused = (b.W_qkv_in,) if b.W_qkv_in is not None else (b.W_qkv, b.W_in)
            for t in (*fused, b.W_O, b.W_out):
                total += t.numel() * t.element_size()
        return total


class FamilyStepper:
    """KV-cached forward over :class:`FamilyWeights` that reports one hook's activation.

    Same interface as :class:`~axon_core.residuals.FastStepper`: ``step(tokens)``
    returns a :class:`~axon_core.residuals.StepOutput`. All state is in the
    stepper (never in the model), so concurrent runs on one model need no lock.
    """

    shares_model_state = False  # no hooks on the model: concurrent steppers need no lock
    supports_extra_hooks = True

    def __init__(self, weights: FamilyWeights, hook_name: str, edit: Edit | None = None,
                 capacity: int | None = None, extra_hooks=(), extra_edits=None):
        m = HOOK.match(hook_name)
        if m is None:
            raise ValueError(f"FamilyStepper cannot read hook {hook_name!r}")
        self.w = weights
        self.layer, self.site = int(m.group(1)), m.group(2)
        # More hook points read in the same forward (StepOutput.extra), optionally edited
        # (after ``edit`` where a hook is both), as FastStepper's ``extra_hooks``.
        self.extra_hooks = tuple(dict.fromkeys(extra_hooks))
        self.extra_edits = dict(extra_edits or {})
        unread = set(self.extra_edits) - set(self.extra_hooks)
        if unread:
            raise ValueError(f"edits at hooks not among extra_hooks: {sorted(unread)}")
        self.taps: dict[tuple[int, str], list[str]] = {}
        for name in (hook_name, *self.extra_hooks):
            mm = HOOK.match(name)
            if mm is None:
                raise ValueError(f"FamilyStepper cannot read hook {name!r}")
            layer, site = int(mm.group(1)), mm.group(2)
            if layer >= len(weights.blocks):
                raise ValueError(f"the model has no block {layer}")
            if site == "hook_resid_mid" and weights.parallel:
                raise ValueError("a parallel attention+MLP block has no hook_resid_mid")
        for name in self.extra_hooks:
            mm = HOOK.match(name)
            self.taps.setdefault((int(mm.group(1)), mm.group(2)), []).append(name)
        self.edit = edit
        self.length = 0
        # [n_layers, Hkv, positions, d_head]: ``capacity`` positions when the run
        # says how long it will be, else grown (doubling) as the run needs them.
        self.keys = self.values = None
        self._grow(min(weights.n_ctx, capacity) if capacity else _INITIAL_CAPACITY)

    def _grow(self, need: int) -> None:
        cap = 0 if self.keys is None else self.keys.shape[2]
        if need <= cap:
            return
        new = min(self.w.n_ctx, max(need, 2 * cap))
        w = self.w
        shape = (len(w.blocks), w.n_kv_heads, new, w.d_head)
        keys = torch.zeros(shape, dtype=w.W_E.dtype, device=w.W_E.device)
        values = torch.zeros_like(keys)
        if self.keys is not None and self.length:
            keys[:, :, : self.length] = self.keys[:, :, : self.length]
            values[:, :, : self.length] = self.values[:, :, : self.length]
        self.keys, self.values = keys, values

    def _at_hook(self, layer: int, site: str, x: torch.Tensor, out: dict) -> torch.Tensor:
        if layer == self.layer and site == self.site:
            if self.edit is not None:
                x = self.edit(x)
            out["acts"] = x
        names = self.taps.get((layer, site)) if self.taps else None
        if names:
            for name in names:
                edit = self.extra_edits.get(name)
                if edit is not None:
                    x = edit(x)
            for name in names:
                out[name] = x
        return x

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """TransformerLens's ``apply_rotary`` for x [n, heads, d_head] at positions whose tables are cos/sin [n, r]."""
        r = self.w.rotary_dim
        x_rot, x_pass = x[..., :r], x[..., r:]
        if self.w.rotary_adjacent_pairs:
            flip = torch.stack([-x_rot[..., 1::2], x_rot[..., ::2]], -1).flatten(-2)
        else:
            half = r // 2
            flip = torch.cat([-x_rot[..., half:], x_rot[..., :half]], -1)
        rotated = x_rot * cos[:, None, :] + flip * sin[:, None, :]
        return torch.cat([rotated, x_pass], -1) if x_pass.shape[-1] else rotated

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor):
        w, n = self.w, tokens.shape[0]
        start, end = self.length, self.length + n
        if end > w.n_ctx:
            raise ValueError(f"sequence of {end} tokens exceeds the model's context of {w.n_ctx}")
        self._grow(end)
        h, hkv, dh = w.n_heads, w.n_kv_heads, w.d_head
        g = h // hkv
        out: dict[str, torch.Tensor] = {}
        x = w.W_E[tokens]
        if w.W_pos is not None:
            x = x + w.W_pos[start:end]
        q_pos = torch.arange(start, end, device=x.device)[:, None]
        k_pos = torch.arange(end, device=x.device)[None, :]
        for layer, b in enumerate(w.blocks):
            x = self._at_hook(layer, "hook_resid_pre", x, out)
            hn = b.ln1(x)[0] if b.ln1 is not None else x
            mlp_pre = None
            if b.W_qkv_in is not None:  # one pass over Q/K/V and the MLP input
                both = torch.addmm(b.b_qkv_in, hn, b.W_qkv_in)
                qkv, mlp_pre = both[:, : (h + 2 * hkv) * dh], both[:, (h + 2 * hkv) * dh :]
            else:
                qkv = torch.addmm(b.b_qkv, hn, b.W_qkv)
            q = qkv[:, : h * dh].view(n, h, dh)
            k = qkv[:, h * dh : (h + hkv) * dh].view(n, hkv, dh)
            v = qkv[:, (h + hkv) * dh :].view(n, hkv, dh)
            if b.q_norm is not None:
                q, k = b.q_norm(q)[0], b.k_norm(k)[0]
            if b.rot >= 0:
                cos, sin = w.rotary[b.rot]
                if b.q_norm is None:  # q and k side by side in qkv: rotate both at once
                    qk = self._rotate(qkv[:, : (h + hkv) * dh].view(n, h + hkv, dh), cos[start:end], sin[start:end])
                    q, k = qk[:, :h], qk[:, h:]
                else:
                    q = self._rotate(q, cos[start:end], sin[start:end])
                    k = self._rotate(k, cos[start:end], sin[start:end])
            self.keys[layer, :, start:end] = k.transpose(0, 1)
            self.values[layer, :, start:end] = v.transpose(0, 1)
            first = 0 if b.window is None or n > 1 else max(0, end - b.window)
            keys = self.keys[layer, :, first:end]  # [Hkv, kv, dh]
            values = self.values[layer, :, first:end]
            # Query head j·g+i reads KV head j (TransformerLens's repeat_interleave).
            qg = q.view(n, hkv, g, dh).permute(1, 2, 0, 3).reshape(hkv, g * n, dh)
            scores = _softcap(qg @ keys.transpose(1, 2) / b.attn_scale, w.attn_soft_cap)
            if n > 1:  # one new token sees every cached key in its (sliced) window
                mask = k_pos > q_pos
                if b.window is not None:
                    mask = mask | (k_pos <= q_pos - b.window)
                scores = scores.masked_fill(mask.repeat(g, 1), float("-inf"))
            z = (scores.softmax(-1) @ values).view(hkv, g, n, dh).permute(2, 0, 1, 3).reshape(n, h, dh)
            z = self._at_hook(layer, "attn.hook_z", z, out)
            attn_out = torch.addmm(b.b_O, z.reshape(n, h * dh), b.W_O)
            if b.ln1_post is not None:
                attn_out = b.ln1_post(attn_out)[0]
            attn_out = self._at_hook(layer, "hook_attn_out", attn_out, out)
            if w.parallel:
                mlp_in = x
            else:
                x = self._at_hook(layer, "hook_resid_mid", x + attn_out, out)
                mlp_in = x
            if mlp_pre is not None:
                post = w.act(mlp_pre)
            elif w.gated:
                hn = b.ln2(mlp_in)[0] if b.ln2 is not None else mlp_in
                gate_in = hn @ b.W_in
                d_mlp = gate_in.shape[-1] // 2
                post = w.act(gate_in[:, :d_mlp]) * gate_in[:, d_mlp:] + b.b_in
            else:
                hn = b.ln2(mlp_in)[0] if b.ln2 is not None else mlp_in
                post = w.act(torch.addmm(b.b_in, hn, b.W_in))
            mlp_out = torch.addmm(b.b_out, post, b.W_out)
            if b.ln2_post is not None:
                mlp_out = b.ln2_post(mlp_out)[0]
            mlp_out = self._at_hook(layer, "hook_mlp_out", mlp_out, out)
            x = x + attn_out + mlp_out if w.parallel else x + mlp_out
            x = self._at_hook(layer, "hook_resid_post", x, out)
        self.length = end
        if w.ln_final is not None:
            normed, scales = w.ln_final(x)
            scales = scales[:, 0]
        else:
            normed, scales = x, torch.ones(n, dtype=x.dtype, device=x.device)
        logits = _softcap(torch.addmm(w.b_U, normed[-1:], w.W_U)[0], w.logit_soft_cap)
        extra = {"extra": {name: out[name].clone() for name in self.extra_hooks}} if self.extra_hooks else {}
        return StepOutput(acts=out["acts"].clone(), last_logits=logits, final_scale=scales, **extra)
