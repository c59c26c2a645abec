"""Forks (issue 23 item 3): a run continued as if another token had been chosen at one position.

References share nothing with axon_core.fork: at temperature 0 the continuation
is TransformerLens's own greedy argmax, one full forward per token over the
prefix plus the forced token; with sampling, the same fork twice gives the
same tokens (and the engine computes an identical fork once)."""

from __future__ import annotations

import pytest
import torch

from axon_core.engine import Engine
from axon_core.fork import Fork, ForkError, fork_seed
from axon_core.generation import GenerationSettings, generate
from reference import greedy_tokens
from steps_factory import other_candidate

PROMPT = "The capital of France is"
GREEDY = GenerationSettings(max_new_tokens=9, temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0,
                            seed=0, feature_k=10, activation_threshold=0.1, stop_at_eos=False)
SAMPLED = GenerationSettings(max_new_tokens=10, temperature=1.0, top_k=40, top_p=0.95, repetition_penalty=1.2,
                             seed=3, feature_k=10, activation_threshold=0.1, stop_at_eos=False)


@pytest.mark.parametrize("offset", [0, 3, 8])
def test_greedy_fork_continues_as_a_fresh_run_of_prefix_plus_forced_token(pair, offset):
    base = list(generate(pair, PROMPT, GREEDY))
    n_prompt = 1 + sum(s.is_prompt for s in base)  # BOS first
    q = n_prompt + offset
    tok = other_candidate(base, q)
    steps = list(generate(pair, PROMPT, GREEDY, fork=Fork(q, tok), base=base))
    assert [s.position for s in steps] == list(range(1, n_prompt + GREEDY.max_new_tokens))
    assert [s.token_id for s in steps if s.position < q] == [s.token_id for s in base if s.position < q]
    forced = steps[q - 1]
    assert forced.token_id == tok and not forced.is_prompt
    assert sum(s.is_prompt for s in steps) == n_prompt - 1
    bos = pair.model.tokenizer.bos_token_id
    prefix = [bos] + [s.token_id for s in steps if s.position <= q]
    want = greedy_tokens(pair.model, prefix, n_prompt + GREEDY.max_new_tokens - 1 - q)
    assert [s.token_id for s in steps if s.position > q] == want
    # the decision before the fork now chose the forced token; the forced token's probability is its candidate's
    before = steps[q - 2]
    assert before.decision.chosen == tok == before.next_token_id
    assert [c.token_id for c in before.decision.candidates if c.chosen] == [tok]
    with torch.inference_mode():
        logits, cache = pair.model.run_with_cache(torch.tensor([prefix]))
        acts = pair.sae.encode(cache[pair.hook_name][0, q])
    logp = logits[0, q - 1].float().log_softmax(-1)
    assert forced.prob == pytest.approx(float(logp[tok].exp()), abs=1e-4)
    # and its features are the SAE's encoding of the residual at the fork, as in any run
    top = acts.topk(5)
    assert [f.index for f in forced.features[:5]] == top.indices.tolist()


def test_sampled_fork_is_deterministic_and_has_its_own_stream(pair):
    base = list(generate(pair, PROMPT, SAMPLED))
    q = 1 + sum(s.is_prompt for s in base) + 2
    tok = other_candidate(base, q)
    one = [s.token_id for s in generate(pair, PROMPT, SAMPLED, fork=Fork(q, tok), base=base)]
    two = [s.token_id for s in generate(pair, PROMPT, SAMPLED, fork=Fork(q, tok), base=base)]
    assert one == two and one[q - 1] == tok and len(one) == len(base)
    assert fork_seed(SAMPLED.seed, Fork(q, tok)) == fork_seed(SAMPLED.seed, Fork(q, tok))
    assert fork_seed(SAMPLED.seed, Fork(q, tok)) != fork_seed(SAMPLED.seed + 1, Fork(q, tok))
    # forcing the token that was chosen is the same prefix, but sampled from the fork's own stream
    same = base[q - 1].token_id
    again = [s.token_id for s in generate(pair, PROMPT, SAMPLED, fork=Fork(q, same), base=base)]
    assert again[:q] == [s.token_id for s in base][:q]


def test_forks_that_cannot_be_made(pair):
    base = list(generate(pair, PROMPT, GREEDY))
    n_prompt = 1 + sum(s.is_prompt for s in base)
    for q in (0, 2, n_prompt - 1, n_prompt + GREEDY.max_new_tokens):
        with pytest.raises(ForkError):
            list(generate(pair, PROMPT, GREEDY, fork=Fork(q, 5), base=base))
    with pytest.raises(ForkError):
        list(generate(pair, PROMPT, GREEDY, fork=Fork(n_prompt, 10**9), base=base))
    with pytest.raises(ValueError):  # the base is another prompt's run
        list(generate(pair, "Another prompt", GREEDY, fork=Fork(n_prompt + 1, 5), base=base))


def test_engine_computes_an_identical_fork_once(pair):
    engine = Engine(batch="never")
    try:
        live = engine.submit(pair, PROMPT, SAMPLED)
        while not live.finished:
            live.wait(len(live.steps), 0.5)
        q = 1 + sum(s.is_prompt for s in live.steps) + 1
        fork = Fork(q, other_candidate(live.steps, q))
        runs = [engine.submit(pair, PROMPT, SAMPLED, fork=fork, base=live.steps) for _ in range(2)]
        for r in runs:
            while not r.finished:
                r.wait(len(r.steps), 0.5)
        assert runs[0] is runs[1] and engine.stats()["computed"] == 2
        again = engine.submit(pair, PROMPT, SAMPLED, fork=fork, base=live.steps)  # from the replay cache
        assert again is runs[0] and engine.stats()["computed"] == 2
        other = engine.submit(pair, PROMPT, SAMPLED, fork=Fork(q, live.steps[q - 1].token_id), base=live.steps)
        assert other is not runs[0] and engine.stats()["computed"] == 3
        ref = [s.token_id for s in generate(pair, PROMPT, SAMPLED, fork=fork, base=live.steps)]
        assert [s.token_id for s in runs[0].steps] == ref
        for r in [live, *runs, again, other]:
            engine.release(r)
    finally:
        engine.close()
