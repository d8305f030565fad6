"""Bigram language model: counts of (previous token, next token) pairs, seeded sampling, and the
held-out perplexity of its add-k smoothed estimate.

Counts are kept as a CSR table over token ids (row = previous token, columns = the tokens seen after
it), so a 10k vocabulary costs memory in proportion to the distinct pairs, not V².

Glossary: c(v, w) bigram count, c(v) = Σ_w c(v, w) count of v as a history, V vocabulary size.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import numpy as np


class BigramModel:
    """Bigram counts over ids 0..vocab_size-1."""

    def __init__(self, indptr: np.ndarray, next_ids: np.ndarray, counts: np.ndarray, unigram: np.ndarray) -> None:
        self.indptr, self.next_ids, self.counts, self.unigram = indptr, next_ids, counts, unigram
        self.vocab_size = len(unigram)
        rows = np.repeat(np.arange(self.vocab_size), np.diff(indptr))
        self._keys = rows * self.vocab_size + next_ids  # sorted, one per distinct pair (v, w)
        self.history = np.bincount(rows, weights=counts, minlength=self.vocab_size)  # c(v)

    @classmethod
    def fit(cls, ids: Sequence[int] | np.ndarray, vocab_size: int) -> BigramModel:
        """Count every adjacent pair of `ids` (a token stream)."""
        stream = np.asarray(ids, dtype=np.int64)
        if stream.size < 2:
            raise ValueError("a bigram model needs at least two tokens")
        if stream.min() < 0 or stream.max() >= vocab_size:
            raise ValueError(f"token ids must be in 0..{vocab_size - 1}")
        keys, counts = np.unique(stream[:-1] * vocab_size + stream[1:], return_counts=True)  # sorted by (v, w)
        prev, nxt = np.divmod(keys, vocab_size)
        indptr = np.zeros(vocab_size + 1, dtype=np.int64)
        np.add.at(indptr, prev + 1, 1)
        return cls(np.cumsum(indptr), nxt, counts.astype(np.int64), np.bincount(stream, minlength=vocab_size))

    # ------------------------------------------------------------------------------------ sampling
    def next_distribution(self, prev: int, banned: Collection[int] = ()) -> tuple[np.ndarray, np.ndarray]:
        """(candidate ids, probabilities) of the token after `prev`, maximum likelihood c(v, w) / c(v),
        without the `banned` ids; falls back to unigram frequencies when `prev` was never followed."""
        lo, hi = self.indptr[prev], self.indptr[prev + 1]
        ids, weights = self.next_ids[lo:hi], self.counts[lo:hi].astype(np.float64)
        keep = ~np.isin(ids, list(banned))
        if not keep.any():
            ids, weights = np.arange(self.vocab_size), self.unigram.astype(np.float64)
            keep = (weights > 0) & ~np.isin(ids, list(banned))
        ids, weights = ids[keep], weights[keep]
        return ids, weights / weights.sum()

    def sample(
        self, start: Sequence[int], length: int, seed: int | None = None, banned: Collection[int] = ()
    ) -> list[int]:
        """`length` ids drawn one by one after `start`; the same seed gives the same ids."""
        if not start:
            raise ValueError("sampling needs at least one start token")
        rng = np.random.default_rng(seed)
        out, prev = [], int(start[-1])
        for _ in range(length):
            ids, probs = self.next_distribution(prev, banned)
            prev = int(rng.choice(ids, p=probs))
            out.append(prev)
        return out

    # ---------------------------------------------------------------------------------- evaluation
    def pair_counts(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """c(v, w) for each pair (0 for pairs never seen)."""
        keys = prev * self.vocab_size + nxt
        pos = np.searchsorted(self._keys, keys).clip(max=len(self._keys) - 1)
        return np.where(self._keys[pos] == keys, self.counts[pos], 0)

    def log_probs(self, ids: Sequence[int] | np.ndarray, k: float) -> np.ndarray:
        """log P(w_i | w_{i-1}) for i = 1..N-1 under add-k smoothing:

            P(w | v) = (c(v, w) + k) / (c(v) + k V)

        (Jurafsky & Martin, Speech and Language Processing, 3rd ed. draft, Sec. 3.6.2 "Add-k smoothing").
        """
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        stream = np.asarray(ids, dtype=np.int64)
        prev, nxt = stream[:-1], stream[1:]
        numerator = self.pair_counts(prev, nxt) + k
        denominator = self.history[prev] + k * self.vocab_size
        return np.log(numerator) - np.log(denominator)

    def perplexity(self, ids: Sequence[int] | np.ndarray, k: float) -> float:
        """exp of the mean negative log-likelihood of w_1..w_{N-1} given their predecessors
        (perplexity PP(W) = P(w_1 … w_N)^(-1/N); Jurafsky & Martin, SLP3, Sec. 3.3)."""
        return math.exp(-float(self.log_probs(ids, k).mean()))
