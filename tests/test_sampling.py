"""Sampling rules on hand-made logits."""

import torch

from axon_core.sampling import penalise_repeats, sample_next, sampling_distribution


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0])
    probs, ids = sampling_distribution(logits, 1.0, top_k=3, top_p=1.0)
    assert ids.tolist() == [0, 1, 2]
    assert torch.allclose(probs, logits[:3].softmax(-1))
    full = logits.softmax(-1)
    # top_p 0.8: p0≈0.64 < 0.8, so token 1 stays; the mass before token 2 (≈0.88) reaches 0.8.
    probs, ids = sampling_distribution(logits, 1.0, top_k=0, top_p=0.8)
    assert ids is None and (probs > 0).tolist() == [True, True, False, False, False]
    assert torch.allclose(probs[:2], full[:2] / full[:2].sum())
    # The same cut when top-k is on too.
    probs, ids = sampling_distribution(logits, 1.0, top_k=4, top_p=0.8)
    assert (probs > 0).tolist() == [True, True, False, False]


def test_temperature_sharpens_and_greedy_is_argmax():
    logits = torch.tensor([2.0, 1.0, 0.0])
    cold, _ = sampling_distribution(logits, 0.5, 0, 1.0)
    assert cold[0] > logits.softmax(-1)[0]
    choice = sample_next(logits, [], 0.0, 0, 1.0, 1.0, torch.Generator().manual_seed(0))
    assert choice.token_id == 0 and choice.sampled_prob == 1.0
    assert abs(choice.prob - float(logits.softmax(-1)[0])) < 1e-6


def test_repetition_penalty_divides_positive_and_multiplies_negative():
    logits = torch.tensor([2.0, -2.0, 1.0])
    out = penalise_repeats(logits, [0, 1, 1], 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0]


def test_sampling_is_seeded_and_follows_the_distribution():
    logits = torch.tensor([1.0, 0.0, -1.0, -9.0])
    draws = [sample_next(logits, [], 1.0, 0, 1.0, 1.0, torch.Generator().manual_seed(s)).token_id
             for s in range(400)]
    again = [sample_next(logits, [], 1.0, 0, 1.0, 1.0, torch.Generator().manual_seed(s)).token_id
             for s in range(400)]
    assert draws == again
    freq = draws.count(0) / len(draws)
    assert abs(freq - float(logits.softmax(-1)[0])) < 0.08
    assert 3 not in draws
