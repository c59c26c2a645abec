"""A fork reuses its run's keys and values (issue 23: "a fork computes only what
follows the fork point where the run's keys and values are still at hand").

References share nothing with axon_core: a fresh run of the prefix plus the
forced token is TransformerLens's own greedy argmax (one full forward per token),
its features ``sae.encode`` of one plain ``run_with_cache`` (tests/reference.py).
What the fork computed is a count (positions fed through the model), never a clock."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from axon_core import kv_store
from axon_core.engine import Engine
from axon_core.fork import Fork
from axon_core.generation import Generation, GenerationSettings, generate
from axon_core.kv_store import KVStore, budget_from_env
from axon_core.residuals import TransformerLensStepper
from reference import Reference, check_steps, greedy_tokens, rows_of_steps
from steps_factory import other_candidate

PROMPT = "The capital of France is"
GREEDY = GenerationSettings(max_new_tokens=12, temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0,
                            seed=0, feature_k=10, activation_threshold=0.1, stop_at_eos=False)
SAMPLED = GenerationSettings(max_new_tokens=12, temperature=1.0, top_k=40, top_p=0.95, repetition_penalty=1.2,
                             seed=3, feature_k=10, activation_threshold=0.1, stop_at_eos=False)


def _run(pair, settings, **kw) -> tuple[list, Generation]:
    g = Generation(pair, PROMPT, settings, **kw)
    steps = g.start()
    while not g.done:
        steps.append(g.step())
    return steps, g


def _fork(pair, settings, base_steps, fork, kv, **kw) -> tuple[list, Generation]:
    g = Generation(pair, PROMPT, settings, fork=fork, base=base_steps, kv=kv, **kw)
    steps = g.start()
    while not g.done:
        steps.append(g.step())
    return steps, g


def _check_features(pair, steps, q, settings=GREEDY):
    """Every position from the fork on: features and attributions against ``sae.encode``
    of a plain ``run_with_cache`` over the fork's tokens; returns the counts checked."""
    bos = [pair.model.tokenizer.bos_token_id] if steps[0].position == 1 else []
    ref = Reference.run(pair.model, bos + [s.token_id for s in steps], {0: (pair.hook_name, pair.sae)})
    counts = check_steps(ref, rows_of_steps(s for s in steps if s.position >= q), settings.feature_k,
                         settings.activation_threshold, atol=1e-4, single_layer=0)
    assert counts["features"][0] > 0
    return counts


def _n_prompt(steps):
    return 1 + sum(s.is_prompt for s in steps)  # BOS first


@pytest.mark.parametrize("offset", [0, 4, 11])
def test_kv_reused_greedy_fork_is_a_fresh_run_of_prefix_plus_forced_token(pair, offset):
    base, g = _run(pair, GREEDY)
    kept = g.keep_kv(("owner",))
    n_prompt = _n_prompt(base)
    n_total = n_prompt + GREEDY.max_new_tokens  # positions, BOS included
    assert g.positions_computed == n_total and kept.keys.shape[2] == n_total
    q = n_prompt + offset
    tok = other_candidate(base, q)
    steps, f = _fork(pair, GREEDY, base, Fork(q, tok), kept)
    # only the forced token and what follows went through the model
    assert f.kv_reused and f.positions_computed == n_total - q  # (the recompute: n_total)
    assert [s.position for s in steps] == list(range(1, n_total))
    assert [s.token_id for s in steps if s.position < q] == [s.token_id for s in base if s.position < q]
    bos = pair.model.tokenizer.bos_token_id
    prefix = [bos] + [s.token_id for s in steps if s.position <= q]
    assert prefix[-1] == tok
    assert [s.token_id for s in steps if s.position > q] == greedy_tokens(pair.model, prefix, n_total - 1 - q)
    # every position from the fork on: features (index, activation) and attributions against sae.encode
    ref = Reference.run(pair.model, [bos] + [s.token_id for s in steps], {8: (pair.hook_name, pair.sae)})
    counts = check_steps(ref, rows_of_steps(s for s in steps if s.position >= q), GREEDY.feature_k,
                         GREEDY.activation_threshold, atol=1e-4, single_layer=8)
    assert counts["features"][8] > 0 and (counts["attributed"] > 0 or q == n_total - 1)
    # the same as the fork that recomputes its prefix
    again, r = _fork(pair, GREEDY, base, Fork(q, tok), None)
    assert not r.kv_reused and r.positions_computed == n_total
    assert [s.token_id for s in again] == [s.token_id for s in steps]


def test_the_base_runs_keys_are_not_changed_by_its_forks(pair):
    """Two forks of one kept run, at different points, in either order: both right, the kept keys untouched."""
    base, g = _run(pair, GREEDY)
    kept = g.keep_kv()
    keys, values = kept.keys.clone(), kept.values.clone()
    n_prompt = _n_prompt(base)
    bos = pair.model.tokenizer.bos_token_id
    n_total = n_prompt + GREEDY.max_new_tokens
    for q in (n_prompt + 6, n_prompt + 1):
        tok = other_candidate(base, q)
        steps, f = _fork(pair, GREEDY, base, Fork(q, tok), kept)
        assert f.kv_reused and f.positions_computed == n_total - q
        prefix = [bos] + [s.token_id for s in steps if s.position <= q]
        assert [s.token_id for s in steps if s.position > q] == greedy_tokens(pair.model, prefix, n_total - 1 - q)
        _check_features(pair, steps, q)
        assert torch.equal(kept.keys, keys) and torch.equal(kept.values, values)


def test_sampled_kv_fork_twice_gives_the_same_tokens_as_the_recomputed_one(pair):
    base, g = _run(pair, SAMPLED)
    kept = g.keep_kv()
    q = _n_prompt(base) + 3
    tok = other_candidate(base, q)
    one, a = _fork(pair, SAMPLED, base, Fork(q, tok), kept)
    two, b = _fork(pair, SAMPLED, base, Fork(q, tok), kept)
    recomputed = [s.token_id for s in generate(pair, PROMPT, SAMPLED, fork=Fork(q, tok), base=base)]
    assert a.kv_reused and b.kv_reused
    assert [s.token_id for s in one] == [s.token_id for s in two] == recomputed
    assert one[q - 1].token_id == tok
    _check_features(pair, one, q, SAMPLED)


def test_kv_reused_fork_of_a_several_layer_run(pairs):
    layer = {i: pairs.get("gpt2-small-res-jb", f"blocks.{i}.hook_resid_pre") for i in (2, 5, 8, 11)}
    extra = [layer[i] for i in (2, 5, 11)]
    base, g = _run(layer[8], GREEDY, extra=extra)
    kept = g.keep_kv()
    n_prompt = _n_prompt(base)
    n_total = n_prompt + GREEDY.max_new_tokens
    q = n_prompt + 5
    tok = other_candidate(base, q)
    steps, f = _fork(layer[8], GREEDY, base, Fork(q, tok), kept, extra=extra)
    assert f.kv_reused and f.positions_computed == n_total - q
    model, bos = layer[8].model, layer[8].model.tokenizer.bos_token_id
    prefix = [bos] + [s.token_id for s in steps if s.position <= q]
    assert [s.token_id for s in steps if s.position > q] == greedy_tokens(model, prefix, n_total - 1 - q)
    ref = Reference.run(model, [bos] + [s.token_id for s in steps],
                        {i: (p.hook_name, p.sae) for i, p in layer.items()})
    counts = check_steps(ref, rows_of_steps(s for s in steps if s.position >= q), GREEDY.feature_k,
                         GREEDY.activation_threshold, atol=1e-4)
    assert all(counts["features"][i] > 0 for i in layer)


def test_kv_reused_fork_on_the_family_stepper(pythia_hub):
    """Pythia (rotary, parallel attention + MLP: FamilyStepper, whose cache grows): the same."""
    from axon_core.architectures import FamilyStepper
    from axon_core.loading import PairCache

    pythia = PairCache(device="cpu").get("pythia-70m-deduped-res-sm", "blocks.2.hook_resid_post")
    base, g = _run(pythia, GREEDY)
    assert isinstance(g.stepper, FamilyStepper)
    kept = g.keep_kv()
    bos = [pythia.model.tokenizer.bos_token_id] if base[0].position == 1 else []  # a run without BOS starts at 0
    n_total = len(bos) + len(base)
    q = n_total - GREEDY.max_new_tokens + 4
    tok = other_candidate(base, q)
    steps, f = _fork(pythia, GREEDY, base, Fork(q, tok), kept)
    assert f.kv_reused and f.positions_computed == n_total - q
    prefix = bos + [s.token_id for s in steps if s.position <= q]
    assert [s.token_id for s in steps if s.position > q] == greedy_tokens(pythia.model, prefix, n_total - 1 - q)
    _check_features(pythia, steps, q)
    again, r = _fork(pythia, GREEDY, base, Fork(q, tok), None)
    assert not r.kv_reused and [s.token_id for s in again] == [s.token_id for s in steps]


def test_a_stepper_whose_cache_cannot_be_copied_recomputes(pair):
    """TransformerLens's own stepper: nothing kept, and a fork with a kept run's keys falls back, same tokens."""
    base, g = _run(pair, GREEDY)
    kept = g.keep_kv()
    tl_steps, tl = _run(pair, GREEDY, stepper=TransformerLensStepper(pair.model, pair.hook_name))
    assert tl.keep_kv() is None
    q = _n_prompt(base) + 2
    tok = other_candidate(base, q)
    fresh = TransformerLensStepper(pair.model, pair.hook_name)
    steps, f = _fork(pair, GREEDY, base, Fork(q, tok), kept, stepper=fresh)
    assert not f.kv_reused and f.positions_computed == _n_prompt(base) + GREEDY.max_new_tokens
    assert [s.token_id for s in steps] == [s.token_id for s in _fork(pair, GREEDY, base, Fork(q, tok), kept)[0]]


def test_a_kept_run_of_other_tokens_is_not_used(pair):
    base, g = _run(pair, GREEDY)
    other, h = _run(pair, GreedySeed(1))
    q = _n_prompt(base) + 3
    kept = h.keep_kv()
    if kept.covers([pair.model.tokenizer.bos_token_id] + [s.token_id for s in base if s.position < q]):
        pytest.skip("the sampled run happened to share the greedy prefix")
    steps, f = _fork(pair, GREEDY, base, Fork(q, other_candidate(base, q)), kept)
    assert not f.kv_reused


def test_store_is_bounded_by_bytes_and_frees_what_it_evicts(pair):
    runs = [_run(pair, GreedySeed(i))[1].keep_kv(("o",)) for i in range(4)]
    size = runs[0].nbytes
    store = KVStore(int(2.5 * size))
    refs = [weakref.ref(r.keys) for r in runs]
    for r in runs:
        store.put(r)
    assert len(store) == 2 and store.nbytes <= store.max_bytes
    assert len({r.tokens for r in runs}) == 4  # four different runs
    assert store.find(("o",), runs[0].tokens) is None and store.find(("o",), runs[2].tokens) is runs[2]
    assert store.find(("other owner",), runs[2].tokens) is None
    kept = [r for r in runs[2:]]
    del runs, r
    gc.collect()
    assert [ref() is None for ref in refs[:2]] == [True, True]  # evicted: freed
    assert all(ref() is not None for ref in refs[2:])
    # least recently used out: finding the older keeps it over the newer
    store.find(("o",), kept[0].tokens)
    store.put(_run(pair, GreedySeed(9))[1].keep_kv(("o",)))
    assert store.find(("o",), kept[0].tokens) is kept[0]
    assert store.find(("o",), kept[1].tokens) is None
    assert not KVStore(size - 1).put(kept[0])  # larger than the budget: not kept
    assert budget_from_env("8") == 8 << 20 and budget_from_env("") == kv_store.DEFAULT_BYTES
    assert budget_from_env("0") == 0 and budget_from_env("x") == kv_store.DEFAULT_BYTES


def GreedySeed(i):  # noqa: N802 - sampled runs of different seeds (different tokens)
    return GenerationSettings(max_new_tokens=12, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0,
                              seed=i, feature_k=4, activation_threshold=0.1, stop_at_eos=False)


def _wait(run):
    while not run.finished:
        run.wait(len(run.steps), 0.5)
    return run


def _stats(engine, run):
    return next(r for r in engine.stats()["runs"] if r["id"] == run.id)


def test_engine_forks_from_kept_keys_and_recomputes_after_eviction(pair):
    n_new = GREEDY.max_new_tokens
    engine = Engine(batch="never")
    try:
        live = _wait(engine.submit(pair, PROMPT, GREEDY))
        n_total = _n_prompt(live.steps) + n_new
        assert _stats(engine, live)["positions_computed"] == n_total and not live.kv_reused
        assert engine.stats()["kv_kept"]["runs"] == 1
        q = _n_prompt(live.steps) + 2
        fork = Fork(q, other_candidate(live.steps, q))
        forked = _wait(engine.submit(pair, PROMPT, GREEDY, fork=fork, base=live.steps))
        st = _stats(engine, forked)
        assert st["kv_reused"] and st["positions_computed"] == n_total - q
        # steering changes the keys: a steered run's fork does not take the plain run's
        steer = ((3, 20.0),)
        steered = _wait(engine.submit(pair, PROMPT, GREEDY, steer))
        sfork = Fork(q, other_candidate(steered.steps, q))
        sforked = _wait(engine.submit(pair, PROMPT, GREEDY, steer, fork=sfork, base=steered.steps))
        assert sforked.kv_reused  # its own run's keys
        # evict everything: the next fork (another token, so not the replayed run) recomputes, same tokens
        engine._kv.clear()
        tok2 = next(c.token_id for c in live.steps[q - 2].decision.candidates if c.token_id != fork.token_id
                    and not c.chosen)
        again = _wait(engine.submit(pair, PROMPT, GREEDY, fork=Fork(q, tok2), base=live.steps))
        st2 = _stats(engine, again)
        assert not st2["kv_reused"] and st2["positions_computed"] == n_total
        ref = [s.token_id for s in generate(pair, PROMPT, GREEDY, fork=Fork(q, tok2), base=live.steps)]
        assert [s.token_id for s in again.steps] == ref
        ref1 = [s.token_id for s in generate(pair, PROMPT, GREEDY, fork=fork, base=live.steps)]
        assert [s.token_id for s in forked.steps] == ref1
        _check_features(pair, forked.steps, q)
        _check_features(pair, again.steps, q)
        for r in (live, forked, steered, sforked, again):
            engine.release(r)
    finally:
        engine.close()


def test_engine_keeps_at_most_its_budget(pair):
    one = _run(pair, GreedySeed(0))[1].keep_kv().nbytes
    engine = Engine(batch="never", kv_bytes=3 * one)
    try:
        for i in range(8):
            engine.release(_wait(engine.submit(pair, f"Run {i} of many", GreedySeed(i))))
        kept = engine.stats()["kv_kept"]
        assert kept["runs"] <= 3 and kept["bytes"] <= 3 * one and kept["evicted"] >= 4
    finally:
        engine.close()
