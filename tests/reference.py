"""Independent references for a run's numbers: what the features and direct logit
attributions of every position *should* be, from plain TransformerLens and SAELens
calls only (no AXON code computes any number here).

The reference for a sequence of tokens is one ``model.run_with_cache`` (with the
run's edit hooked in, if any), ``sae.encode`` of each SAE's hook point, and for
the attribution of feature f at position p to the token t that follows::

    stack = a_f · W_dec[f]                    # what f writes into the residual at p
    attr  = cache.logit_attrs(stack, tokens=t, pos_slice=p)

``logit_attrs`` freezes the final norm at the position's cached scale
(``ln_final.hook_scale``; centring for LayerNorm, none for RMSNorm) and reads
the token's unembedding column. TransformerLens leaves out the final norm's
weight there, which is right only where ``from_pretrained`` folded it into
``W_U``; where the weight stays (``normalization_type`` "LN" / "RMS", e.g. a
model loaded with ``fold_ln=False``), the reference instead sends the stack
through the model's own ``ln_final`` with its ``hook_scale`` frozen at the cached
value (the bias taken off: ``ln_final(stack) − ln_final(0)``), then ``W_U[:, t]``.
Where the weight is folded the two agree, and :func:`direct_logit_attrs` checks so.

Worked example::

    ref = Reference.run(pair.model, tokens, {8: (pair.hook_name, pair.sae)})
    ref.top(8, p=3, k=8, threshold=0.1)           # [(index, activation), ...] strongest first
    ref.attributions(8, p=3, indices=[7, 88])     # tensor([attr_7, attr_88]) to tokens[4]
    n = check_steps(ref, rows_of_steps(steps), k=8, threshold=0.1)   # asserts; counts checked
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from axon_core.features import equal_up_to_ties  # a comparison helper (ties), computes no number

def greedy_tokens(model, ids, n: int) -> list[int]:
    """``n`` greedy tokens after ``ids``: a full TransformerLens forward per token, no cache."""
    ids, out = list(ids), []
    with torch.inference_mode():
        for _ in range(n):
            logits = model(torch.tensor([ids]))
            out.append(int(logits[0, -1].argmax()))
            ids.append(out[-1])
    return out


# One position of a run, as the product reports it: (position, next_token_id,
# [(layer, index, activation, attribution)]); layer is None in a run of one SAE.
Row = tuple[int, "int | None", list[tuple["int | None", int, float, "float | None"]]]


def _final_norm_has_weight(model) -> bool:
    return (model.cfg.normalization_type or "") in ("LN", "RMS")


def direct_logit_attrs(model, cache, stack: torch.Tensor, p: int, token: int) -> torch.Tensor:
    """Direct logit attribution of each row of ``stack`` ([n, d_model], written
    into the residual at position ``p``) to ``token``'s logit, as described above."""
    stack = stack.to(cache["ln_final.hook_scale"].dtype)
    with torch.inference_mode():
        via_cache = cache.logit_attrs(stack[:, None, :], tokens=token, pos_slice=p)[:, 0]
        scale = cache["ln_final.hook_scale"][0, p]  # [1]
        frozen = [("ln_final.hook_scale", lambda s, hook: scale.expand_as(s))]
        with model.hooks(fwd_hooks=frozen):
            normed = model.ln_final(stack[None]) - model.ln_final(torch.zeros_like(stack[:1])[None])
        via_norm = normed[0] @ model.W_U[:, token]
    if _final_norm_has_weight(model):
        return via_norm
    # folded: TransformerLens's own logit_attrs is the reference, and the frozen norm agrees with it
    assert torch.allclose(via_norm, via_cache, atol=1e-5, rtol=1e-4), (via_norm, via_cache)
    return via_cache


@dataclass
class Reference:
    """One plain ``run_with_cache`` over ``tokens`` [pos] and each SAE's ``encode``."""

    model: Any
    tokens: torch.Tensor
    cache: Any
    logits: torch.Tensor
    saes: Mapping[Any, tuple[str, Any]]  # layer → (hook_name, sae)
    acts: dict = field(default_factory=dict)  # layer → [pos, d_sae]

    @classmethod
    def run(cls, model, tokens, saes: Mapping[Any, tuple[str, Any]],
            fwd_hooks: Sequence[tuple[str, Callable]] = ()) -> "Reference":
        tokens = torch.as_tensor(tokens, dtype=torch.long).reshape(-1)
        with torch.inference_mode():
            with model.hooks(fwd_hooks=list(fwd_hooks)):
                logits, cache = model.run_with_cache(tokens[None])
            acts = {layer: sae.encode(cache[hook][0]) for layer, (hook, sae) in saes.items()}
        return cls(model, tokens, cache, logits[0], saes, acts)

    def top(self, layer, p: int, k: int, threshold: float) -> list[tuple[int, float]]:
        """The k strongest features of ``layer``'s SAE at ``p`` above ``threshold`` (plain ``topk``)."""
        vals, idx = self.acts[layer][p].topk(k)
        return [(int(i), float(v)) for i, v in zip(idx, vals) if v > threshold]

    def attributions(self, layer, p: int, indices: Sequence[int], token: int | None = None) -> torch.Tensor:
        """Each feature's direct logit attribution at ``p`` to ``token`` (default: the token after p)."""
        token = int(self.tokens[p + 1]) if token is None else int(token)
        _, sae = self.saes[layer]
        idx = torch.tensor(list(indices), dtype=torch.long)
        stack = self.acts[layer][p, idx, None] * sae.W_dec.detach()[idx]
        return direct_logit_attrs(self.model, self.cache, stack, p, token).float()


def rows_of_steps(steps: Iterable) -> list[Row]:
    """:class:`~axon_core.generation.TokenStep` objects as rows."""
    return [(s.position, s.next_token_id, [(f.layer, f.index, f.activation, f.attribution) for f in s.features])
            for s in steps]


def rows_of_json(run: Mapping) -> list[Row]:
    """A run's JSON (the API's / an export's ``tokens``) as rows."""
    return [(t["position"], t["next_token_id"],
             [(f.get("layer"), f["index"], f["activation"], f["attribution"]) for f in t["features"]])
            for t in run["tokens"]]


def check_steps(ref: Reference, rows: Sequence[Row], k: int, threshold: float,
                atol: float = 1e-4, single_layer=None) -> dict:
    """Assert every position's features (index and activation, up to ties) and
    each one's attribution (to the token that follows; None at the last position)
    against ``ref``. A run of one SAE reports layer None: ``single_layer`` names
    the key of its SAE in ``ref.saes``. Returns counts: features checked per layer,
    attributions checked, and the largest |attribution| seen (so a caller can
    assert the check was not vacuous)."""
    n = len(ref.tokens)
    assert [p for p, _, _ in rows] == list(range(n - len(rows), n)), "positions are not the reference's tail"
    features = {layer: 0 for layer in ref.saes}
    attributed, largest = 0, 0.0
    for p, nxt, feats in rows:
        assert nxt == (int(ref.tokens[p + 1]) if p + 1 < n else None), p
        for layer in ref.saes:
            got = [(i, a, t) for lay, i, a, t in feats if (single_layer if lay is None else lay) == layer]
            want = ref.top(layer, p, k, threshold)
            assert equal_up_to_ties([(i, a) for i, a, _ in got], want, atol), (p, layer, got, want)
            features[layer] += len(got)
            if nxt is None:
                assert all(t is None for _, _, t in got), (p, layer)
                continue
            if not got:
                continue
            expect = ref.attributions(layer, p, [i for i, _, _ in got])
            have = torch.tensor([t for _, _, t in got], dtype=torch.float32)
            assert torch.allclose(have, expect, atol=atol, rtol=1e-4), (p, layer, have, expect)
            attributed += len(got)
            largest = max(largest, float(expect.abs().max()))
    return {"features": features, "attributed": attributed, "largest": largest}
