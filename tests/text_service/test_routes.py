"""Every route through FastAPI's TestClient: answers, reproducibility with a seed, and the 4xx
answers to bad input (never a 500)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from shared.text.corpus import load_corpus
from shared.text.tokenizer import tokenize
from tests.shared.text.helpers import SENTENCES

BOOK_TOKENS = {token for sentence in SENTENCES for token in tokenize(sentence)}


def test_health_lists_every_loaded_model(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["models"]) == {"bigram", "lstm", "embeddings"}
    assert all(model["loaded"] for model in body["models"].values())
    assert "384 dimensions" in body["models"]["embeddings"]["detail"]


@pytest.mark.parametrize("route", ["/generate", "/generate_with_rnn"])
def test_generation_continues_the_start_word_with_book_words(client: TestClient, route: str) -> None:
    response = client.post(route, json={"start_word": "The", "length": 30, "seed": 1})
    assert response.status_code == 200
    text = response.json()["generated_text"]
    tokens = tokenize(text)
    assert tokens[0] == "the" and len(tokens) == 31
    assert set(tokens) <= BOOK_TOKENS


@pytest.mark.parametrize("route", ["/generate", "/generate_with_rnn"])
def test_a_seed_makes_generation_reproducible(client: TestClient, route: str) -> None:
    def run(seed: int) -> str:
        return client.post(route, json={"start_word": "the", "length": 40, "seed": seed}).json()["generated_text"]

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_bigram_text_follows_pairs_seen_in_the_book(client: TestClient, tiny_book_path: Path) -> None:
    book = tokenize(load_corpus(tiny_book_path).body)
    seen = set(itertools.pairwise(book))
    text = client.post("/generate", json={"start_word": "sat", "length": 50, "seed": 0}).json()["generated_text"]
    tokens = tokenize(text)
    assert all(pair in seen for pair in itertools.pairwise(tokens))


def test_a_start_text_of_several_words_is_accepted(client: TestClient) -> None:
    response = client.post("/generate_with_rnn", json={"start_word": "the old man", "length": 5, "temperature": 0.5})
    assert response.status_code == 200
    assert tokenize(response.json()["generated_text"])[:3] == ["the", "old", "man"]


@pytest.mark.parametrize("route", ["/generate", "/generate_with_rnn"])
def test_an_unknown_start_word_is_a_422_naming_it(client: TestClient, route: str) -> None:
    response = client.post(route, json={"start_word": "the xyzzy", "length": 5})
    assert response.status_code == 422
    assert "'xyzzy'" in response.json()["detail"] and "unknown start word" in response.json()["detail"]


@pytest.mark.parametrize("route", ["/generate", "/generate_with_rnn"])
@pytest.mark.parametrize(
    "body",
    [
        {"start_word": "", "length": 5},
        {"start_word": "   ", "length": 5},
        {"start_word": "the " * 60, "length": 5},
        {"start_word": "— “ ”", "length": 5},
        {"start_word": "the", "length": 0},
        {"start_word": "the", "length": 501},
        {"start_word": "the", "length": "many"},
        {"start_word": "the", "seed": -1},
        {"length": 5},
    ],
)
def test_bad_generation_input_is_a_422(client: TestClient, route: str, body: dict[str, object]) -> None:
    response = client.post(route, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


@pytest.mark.parametrize("temperature", [0, -1, 5.01, "hot"])
def test_out_of_range_temperature_is_a_422(client: TestClient, temperature: object) -> None:
    response = client.post("/generate_with_rnn", json={"start_word": "the", "length": 5, "temperature": temperature})
    assert response.status_code == 422
    assert "temperature" in response.text


def test_the_limits_themselves_are_accepted(client: TestClient) -> None:
    body = {"start_word": "the", "length": 500, "temperature": 5.0, "seed": 0}
    response = client.post("/generate_with_rnn", json=body)
    assert response.status_code == 200
    assert len(tokenize(response.json()["generated_text"])) == 501


def test_a_malformed_json_body_is_a_422(client: TestClient) -> None:
    response = client.post("/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422


@pytest.mark.parametrize("word", ["sea", "the sea was calm"])
def test_embed_returns_a_unit_vector_of_the_stated_dimension(client: TestClient, word: str) -> None:
    response = client.post("/embed", json={"word": word})
    assert response.status_code == 200
    body = response.json()
    assert body["word"] == word and body["dim"] == 384 and len(body["embedding"]) == 384
    assert math.isclose(math.sqrt(sum(x * x for x in body["embedding"])), 1.0, abs_tol=1e-4)


@pytest.mark.parametrize("body", [{"word": ""}, {"word": "  "}, {"word": "x" * 201}, {"word": 3}, {}])
def test_bad_embed_input_is_a_422(client: TestClient, body: dict[str, object]) -> None:
    assert client.post("/embed", json=body).status_code == 422


def test_similarity_ranks_related_words_above_unrelated_ones(client: TestClient) -> None:
    def score(a: str, b: str) -> float:
        response = client.post("/similarity", json={"word1": a, "word2": b})
        assert response.status_code == 200
        assert response.json()["word1"] == a and response.json()["word2"] == b
        return response.json()["similarity"]

    assert score("prison", "jail") > score("prison", "banana")
    assert score("sea", "sea") == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(
    "body", [{"word1": "sea"}, {"word1": "", "word2": "sea"}, {"word1": "sea", "word2": "y" * 201}]
)
def test_bad_similarity_input_is_a_422(client: TestClient, body: dict[str, object]) -> None:
    assert client.post("/similarity", json=body).status_code == 422


def test_the_openapi_schema_documents_every_route(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/generate", "/generate_with_rnn", "/embed", "/similarity", "/health"} <= set(paths)


@pytest.mark.parametrize("body", [b'{"word": "\\ud83d"}', b'{"word": NaN}', b'{"word": Infinity}'])
def test_unencodable_input_is_a_422_not_a_500(client: TestClient, body: bytes) -> None:
    response = client.post("/embed", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"]
