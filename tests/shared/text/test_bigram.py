"""The bigram model: counts, seeded sampling, and add-k smoothed perplexity against hand values."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from shared.text.bigram import BigramModel

# ids: 0 = <unk>, 1 = "the", 2 = "cat", 3 = "dog", 4 = "."
STREAM = [1, 2, 4, 1, 3, 4, 1, 2, 4, 0, 1, 2]


@pytest.fixture
def model() -> BigramModel:
    return BigramModel.fit(STREAM, vocab_size=5)


def test_next_distribution_is_the_maximum_likelihood_estimate(model: BigramModel) -> None:
    ids, probs = model.next_distribution(1)  # "the" -> cat 3 times, dog once
    assert dict(zip(ids.tolist(), probs.tolist(), strict=True)) == {2: 0.75, 3: 0.25}


def test_banned_ids_are_removed_and_the_rest_renormalised(model: BigramModel) -> None:
    ids, probs = model.next_distribution(4, banned={0})  # "." -> the twice, <unk> once
    assert ids.tolist() == [1] and probs.tolist() == [1.0]


def test_a_token_never_followed_falls_back_to_unigram_counts() -> None:
    lonely = BigramModel.fit([1, 2, 3], vocab_size=4)  # 3 is never followed
    ids, probs = lonely.next_distribution(3)
    assert ids.tolist() == [1, 2, 3] and np.allclose(probs, 1 / 3)


def test_sampling_is_seeded_and_follows_observed_pairs(model: BigramModel) -> None:
    first = model.sample([1], 50, seed=7, banned={0})
    assert first == model.sample([1], 50, seed=7, banned={0})
    assert first != model.sample([1], 50, seed=8, banned={0})
    observed = set(itertools.pairwise(STREAM))
    chain = [1, *first]
    assert all((a, b) in observed for a, b in itertools.pairwise(chain))
    assert 0 not in first


def test_add_k_probabilities_match_the_formula_and_sum_to_one(model: BigramModel) -> None:
    k, V = 0.5, 5
    # "the" is a history 4 times; ("the", "cat") 3 times: (3 + k) / (4 + kV)
    assert model.log_probs([1, 2], k)[0] == pytest.approx(math.log((3 + k) / (4 + k * V)))
    for prev in range(V):
        total = sum(math.exp(model.log_probs([prev, nxt], k)[0]) for nxt in range(V))
        assert total == pytest.approx(1.0)


def test_perplexity_is_exp_of_mean_negative_log_likelihood(model: BigramModel) -> None:
    k, ids = 1.0, [1, 2, 4]
    # c("the")=4, c("the","cat")=3; "cat" is a history twice (the last "cat" has no successor), c("cat",".")=2
    expected = math.exp(-(math.log((3 + k) / (4 + 5 * k)) + math.log((2 + k) / (2 + 5 * k))) / 2)
    assert model.perplexity(ids, k) == pytest.approx(expected)


def test_huge_k_tends_to_the_uniform_perplexity(model: BigramModel) -> None:
    assert model.perplexity(STREAM, 1e9) == pytest.approx(5.0, rel=1e-6)


def test_invalid_inputs_are_rejected(model: BigramModel) -> None:
    with pytest.raises(ValueError, match="k must be positive"):
        model.perplexity(STREAM, 0.0)
    with pytest.raises(ValueError, match="token ids"):
        BigramModel.fit([1, 9], vocab_size=5)
    with pytest.raises(ValueError, match="at least two"):
        BigramModel.fit([1], vocab_size=5)
    with pytest.raises(ValueError, match="start token"):
        model.sample([], 3)
