"""Residuals for several runs at once: one batched forward over shared weights.

The batched form of :meth:`~axon_core.residuals.FastStepper.step` for runs of
one model that each feed one new token: their current tokens go through every
weight matrix as one ``[B, d]`` product (so the weights are read once for B
runs, not B times), while each run keeps its own KV cache, position, hook
point and steering edit. Attention is per run (its own keys and values).
The results equal B separate steps (tokens identical, activations to ~1e-6;
tests/test_engine.py checks it).

Whether this wins depends on the device: with MKL on 2 CPU cores a
``[2, d]`` GEMM costs almost as much as two GEMVs, on a GPU batching wins at
once. The engine therefore measures both and picks (see
:class:`~axon_core.engine.BatchChooser`).

Worked example::

    a = FastStepper(w, "blocks.8.hook_resid_pre"); a.step(prompt_a)
    b = FastStepper(w, "blocks.2.hook_resid_pre"); b.step(prompt_b)
    out_a, out_b = step_batch([a, b], [tok_a, tok_b])   # one pass over the weights
    out_a.acts.shape   # [1, d_model], as a.step(torch.tensor([tok_a])) would give
"""

from __future__ import annotations

import torch

from .residuals import FastStepper, _layer_norm
from .stepping import StepOutput


def can_batch(steppers: list) -> bool:
    """Whether these steppers can step together (fast steppers over one set of weights)."""
    return (len(steppers) > 1 and all(isinstance(s, FastStepper) for s in steppers)
            and all(s.w is steppers[0].w for s in steppers))


@torch.inference_mode()
def step_batch(steppers: list[FastStepper], token_ids: list[int]) -> list[StepOutput]:
    """One new token for each stepper, through one batched forward."""
    w = steppers[0].w
    n_runs, h, dh = len(steppers), w.n_heads, w.d_head
    for s in steppers:
        if s.length + 1 > s.capacity:
            raise ValueError(f"sequence exceeds the stepper's capacity of {s.capacity}")
    device = w.W_E.device
    tokens = torch.tensor(token_ids, device=device)
    positions = torch.tensor([s.length for s in steppers], device=device)
    # rows that read (and maybe edit) each hook point
    hooks: dict[tuple[int, str], list[int]] = {}
    for r, s in enumerate(steppers):
        hooks.setdefault((s.layer, s.site), []).append(r)
    acts: list[torch.Tensor | None] = [None] * n_runs
    # rows that read extra hooks (StepOutput.extra), by hook point
    taps: dict[tuple[int, str], list[tuple[int, list[str]]]] = {}
    for r, s in enumerate(steppers):
        for point, names in getattr(s, "taps", {}).items():
            taps.setdefault(point, []).append((r, names))
    extra: list[dict[str, torch.Tensor]] = [{} for _ in range(n_runs)]

    def at_hook(layer: int, site: str, x: torch.Tensor) -> torch.Tensor:
        if taps:
            x = at_primary(layer, site, x)
            for r, names in taps.get((layer, site), ()):
                s = steppers[r]
                if any(s.extra_edits.get(name) is not None for name in names):
                    x = x.clone()
                    row = x[r: r + 1]
                    for name in names:
                        if s.extra_edits.get(name) is not None:
                            row = s.extra_edits[name](row)
                    x[r: r + 1] = row
                for name in names:
                    extra[r][name] = x[r: r + 1].clone()
            return x
        return at_primary(layer, site, x)

    def at_primary(layer: int, site: str, x: torch.Tensor) -> torch.Tensor:
        rows = hooks.get((layer, site))
        if not rows:
            return x
        edits = [steppers[r].edit for r in rows]
        if any(e is not None for e in edits):
            x = x.clone()
            for r, e in zip(rows, edits):
                if e is not None:
                    x[r: r + 1] = e(x[r: r + 1])
        for r in rows:
            acts[r] = x[r: r + 1].clone()
        return x

    x = w.W_E[tokens] + w.W_pos[positions]
    for layer, b in enumerate(w.blocks):
        x = at_hook(layer, "hook_resid_pre", x)
        hn, _ = _layer_norm(x, b["ln1_w"], b["ln1_b"], w.eps)
        qkv = torch.addmm(b["b_qkv"], hn, b["W_qkv"]).view(n_runs, 3, h, dh)
        q, k, v = qkv.unbind(1)  # each [B, H, dh]
        z = torch.empty(n_runs, h, dh, dtype=x.dtype, device=device)
        for r, s in enumerate(steppers):  # attention: each run over its own cache
            end = s.length + 1
            s.keys[layer, :, s.length] = k[r]
            s.values[layer, :, s.length] = v[r]
            scores = q[r][:, None, :] @ s.keys[layer, :, :end].transpose(1, 2) / w.attn_scale
            z[r] = (scores.softmax(-1) @ s.values[layer, :, :end])[:, 0]
        z = at_hook(layer, "attn.hook_z", z)
        attn_out = torch.addmm(b["b_O"], z.reshape(n_runs, h * dh), b["W_O"])
        attn_out = at_hook(layer, "hook_attn_out", attn_out)
        x = at_hook(layer, "hook_resid_mid", x + attn_out)
        hn, _ = _layer_norm(x, b["ln2_w"], b["ln2_b"], w.eps)
        mlp_out = torch.addmm(b["b_out"], w.act(torch.addmm(b["b_in"], hn, b["W_in"])), b["W_out"])
        mlp_out = at_hook(layer, "hook_mlp_out", mlp_out)
        x = at_hook(layer, "hook_resid_post", x + mlp_out)
    for s in steppers:
        s.length += 1
    normed, scales = _layer_norm(x, *w.ln_final, w.eps)
    logits = torch.addmm(w.b_U, normed, w.W_U)
    return [StepOutput(acts=acts[r], last_logits=logits[r], final_scale=scales[r: r + 1, 0], extra=extra[r])
            for r in range(n_runs)]
