"""Streamed direct logit attributions against TransformerLens's own ActivationCache machinery.

The reference shares nothing with ``axon_core.features``: one plain
``run_with_cache`` over the run's tokens, SAELens's ``encode`` for the
activations, each feature's decoder contribution ``a_f · W_dec[f]`` placed at
the hook's position, and ``ActivationCache.logit_attrs`` (TransformerLens's
final-LayerNorm scaling from the cache, ``apply_ln_to_stack``, and the token's
unembedding direction) for the attribution to the token chosen next.
"""

import pytest
import torch

from axon_core.generation import GenerationSettings, generate

PROMPTS = ["The capital of France is", "def fibonacci(n):"]
SETTINGS = GenerationSettings(max_new_tokens=10, temperature=1.0, top_k=0, top_p=1.0,
                              repetition_penalty=1.0, seed=11, feature_k=10, activation_threshold=0.1,
                              stop_at_eos=False)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_streamed_attributions_match_activation_cache_logit_attrs(pair, prompt):
    model, sae = pair.model, pair.sae
    steps = list(generate(pair, prompt, SETTINGS))
    tokens = torch.tensor([[model.tokenizer.bos_token_id] + [s.token_id for s in steps]])
    with torch.inference_mode():
        logits, cache = model.run_with_cache(tokens)
        acts = sae.encode(cache[pair.hook_name][0])  # [pos, d_sae]
    w_dec = sae.W_dec.detach()

    # The machinery itself reads logits: the final residual through logit_attrs is
    # the logit minus the unembedding bias.
    final = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]  # [1, pos, d_model]
    for p in (1, tokens.shape[1] - 2):
        t = int(tokens[0, p + 1])
        with torch.inference_mode():
            whole = cache.logit_attrs(final[None, :, p], tokens=t, pos_slice=p)
        assert float(whole.squeeze()) == pytest.approx(float(logits[0, p, t] - model.b_U.detach()[t]), abs=1e-3)

    checked, largest = 0, 0.0
    for step in steps:
        p, t = step.position, step.next_token_id
        if t is None:
            assert all(f.attribution is None for f in step.features)
            continue
        assert t == int(tokens[0, p + 1])
        if not step.features:
            continue
        idx = torch.tensor([f.index for f in step.features])
        # Each feature's contribution to the residual at the hook, at position p:
        # components × batch × d_model, as logit_attrs takes a residual stack.
        stack = (acts[p, idx, None] * w_dec[idx])[:, None, :]
        with torch.inference_mode():
            ref = cache.logit_attrs(stack, tokens=t, pos_slice=p)[:, 0]
        got = torch.tensor([f.attribution for f in step.features])
        assert torch.allclose(got, ref.float(), atol=1e-4, rtol=0), (p, got, ref)
        checked += len(idx)
        largest = max(largest, float(ref.abs().max()))
    assert checked > 3 * len(steps)  # the fixture's SAE fires like a real one
    assert largest > 1e-2  # and the attributions are not all ~0
