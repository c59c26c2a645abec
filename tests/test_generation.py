"""The streaming generator against plain TransformerLens + SAELens calls."""

import dataclasses

import pytest
import torch

from axon_core.generation import GenerationSettings, PromptError, generate
from reference import Reference, check_steps, rows_of_steps

PROMPT = "The capital of France is"
SETTINGS = GenerationSettings(max_new_tokens=12, temperature=1.0, top_k=0, top_p=1.0,
                              repetition_penalty=1.0, seed=3, feature_k=8, activation_threshold=0.1,
                              stop_at_eos=False)


def test_real_gpt2_tokenization(pair):
    # The offline hub carries GPT-2's real BPE vocabulary.
    tokens = pair.model.to_tokens(PROMPT)[0].tolist()
    assert tokens == [50256, 464, 3139, 286, 4881, 318]


def test_steps_reproduce_full_forward_features_and_attributions(pair):
    """Features and attributions of every position against tests/reference.py:
    one plain run_with_cache, sae.encode, and cache.logit_attrs of each feature's
    decoder contribution to the token that follows."""
    steps = list(generate(pair, PROMPT, SETTINGS))
    prompt_steps = [s for s in steps if s.is_prompt]
    assert [s.text for s in prompt_steps] == ["The", " capital", " of", " France", " is"]
    assert len(steps) == 5 + SETTINGS.max_new_tokens
    assert [s.position for s in steps] == list(range(1, 1 + len(steps)))
    tokens = [50256] + [s.token_id for s in steps]
    ref = Reference.run(pair.model, tokens, {None: (pair.hook_name, pair.sae)})
    counts = check_steps(ref, rows_of_steps(steps), SETTINGS.feature_k, SETTINGS.activation_threshold)
    assert steps[-1].next_token_id is None and all(f.attribution is None for f in steps[-1].features)
    assert counts["features"][None] > 3 * len(steps)  # the fixture's SAE fires like a real one
    assert counts["attributed"] > 3 * (len(steps) - 1) and counts["largest"] > 1e-2  # not all ~0


def test_same_seed_same_run_and_other_seed_differs(pair):
    a = list(generate(pair, PROMPT, SETTINGS))
    b = list(generate(pair, PROMPT, SETTINGS))
    c = list(generate(pair, PROMPT, dataclasses.replace(SETTINGS, seed=4)))
    assert a == b
    assert [s.token_id for s in a] != [s.token_id for s in c]


def test_sampling_probabilities_reported(pair):
    steps = [s for s in generate(pair, PROMPT, SETTINGS) if not s.is_prompt]
    assert all(0 < s.prob <= 1 and 0 < s.sampled_prob <= 1 for s in steps)
    greedy = dataclasses.replace(SETTINGS, temperature=0.0)
    g = [s for s in generate(pair, PROMPT, greedy) if not s.is_prompt]
    assert all(s.sampled_prob == 1.0 for s in g)
    # Greedy picks the argmax of the model's distribution at every step.
    tokens = torch.tensor([50256, 464, 3139, 286, 4881, 318] + [s.token_id for s in g])
    with torch.inference_mode():
        logits = pair.model(tokens[None])[0]
    assert [int(logits[p - 1].argmax()) for p in range(6, len(tokens))] == [s.token_id for s in g]


def test_context_overflow_stops_cleanly(pair):
    n_ctx = pair.model.cfg.n_ctx
    prompt = " hello" * (n_ctx - 6)  # BOS + n_ctx-6 tokens: room for 5 more
    steps = list(generate(pair, prompt, dataclasses.replace(SETTINGS, max_new_tokens=50)))
    new = [s for s in steps if not s.is_prompt]
    assert len(new) == 5
    assert steps[-1].position == n_ctx - 1
    assert "context" in steps[-1].notice


def test_prompt_too_long_or_empty_is_a_clear_error(pair):
    n_ctx = pair.model.cfg.n_ctx
    with pytest.raises(PromptError, match="tokens long"):
        next(generate(pair, " hello" * n_ctx, SETTINGS))
    for empty in ["", "   \n\t"]:
        with pytest.raises(PromptError, match="empty"):
            next(generate(pair, empty, SETTINGS))


def test_stop_at_eos(pair):
    """With stop_at_eos the run ends on the first generated <|endoftext|>."""
    bias = torch.zeros(pair.model.cfg.d_vocab)
    bias[50256] = 1e4  # make <|endoftext|> certain by editing the logits' bias
    original = pair.fast_weights.b_U.clone()
    pair.fast_weights.b_U += bias
    try:
        steps = list(generate(pair, PROMPT, dataclasses.replace(SETTINGS, stop_at_eos=True)))
    finally:
        pair.fast_weights.b_U.copy_(original)
    new = [s for s in steps if not s.is_prompt]
    assert len(new) == 1 and new[0].token_id == 50256 and "endoftext" in new[0].notice
