"""The legacy Module 6 routes: bigram and LSTM generation, embeddings, similarity, health.

Handlers are plain `def`s: FastAPI runs them in its thread pool, so a long generation does not
block the event loop.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, status

from shared.service.http import ErrorBody, UnprocessableBody
from shared.text import lstm as lstm_lib
from shared.text.schemas import (
    EmbedRequest,
    EmbedResponse,
    GenerateRequest,
    GenerateResponse,
    HealthResponse,
    ModelStatus,
    RNNGenerateRequest,
    SimilarityRequest,
    SimilarityResponse,
)
from shared.text.tokenizer import WordTokenizer, tokenize
from text_service.deps import Bigram, EmbedderDep, LSTMModel, Models

logger = logging.getLogger(__name__)

router = APIRouter()

ERRORS: dict[int | str, dict] = {
    status.HTTP_400_BAD_REQUEST: {"model": ErrorBody, "description": "the body cannot be parsed (e.g. not UTF-8)"},
    status.HTTP_422_UNPROCESSABLE_CONTENT: {
        "model": UnprocessableBody,
        "description": "invalid input (a list of field errors), or a start word outside the vocabulary (a sentence)",
    },
    status.HTTP_503_SERVICE_UNAVAILABLE: {"model": ErrorBody, "description": "the route's model is not loaded"},
}


def start_ids(tokenizer: WordTokenizer, start_word: str) -> list[int]:
    """Ids of the start text; a 422 naming the words that are not in the vocabulary."""
    tokens = tokenize(start_word)
    if not tokens:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"start_word {start_word!r} has no words")
    unknown = [token for token in tokens if token not in tokenizer]
    if unknown:
        words = ", ".join(repr(word) for word in dict.fromkeys(unknown))
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"unknown start word {words}: not in the {len(tokenizer) - 1:,}-word vocabulary of the corpus",
        )
    return tokenizer.token_ids(tokens)


@router.post("/generate", response_model=GenerateResponse, responses=ERRORS)
def generate(body: GenerateRequest, bigram: Bigram) -> GenerateResponse:
    """Text from the bigram model: each next token drawn from the counts after the previous one."""
    model, tokenizer = bigram
    start = start_ids(tokenizer, body.start_word)
    ids = model.sample(start, body.length, seed=body.seed, banned={tokenizer.unk_id})
    return GenerateResponse(generated_text=tokenizer.decode([*start, *ids]))


@router.post("/generate_with_rnn", response_model=GenerateResponse, responses=ERRORS)
def generate_with_rnn(body: RNNGenerateRequest, lstm: LSTMModel) -> GenerateResponse:
    """Text from the word LSTM, sampled at the given temperature."""
    model, tokenizer = lstm
    start = start_ids(tokenizer, body.start_word)
    ids = lstm_lib.sample(model, start, body.length, body.temperature, seed=body.seed, banned={tokenizer.unk_id})
    return GenerateResponse(generated_text=tokenizer.decode([*start, *ids]))


@router.post("/embed", response_model=EmbedResponse, responses=ERRORS)
def embed(body: EmbedRequest, embedder: EmbedderDep) -> EmbedResponse:
    """The unit-length embedding of a word or a short text."""
    vector = embedder.embed([body.word])[0]
    return EmbedResponse(word=body.word, embedding=vector.tolist(), dim=embedder.dim)


@router.post("/similarity", response_model=SimilarityResponse, responses=ERRORS)
def similarity(body: SimilarityRequest, embedder: EmbedderDep) -> SimilarityResponse:
    """Cosine similarity of two words' (or short texts') embeddings."""
    return SimilarityResponse(
        word1=body.word1, word2=body.word2, similarity=embedder.similarity(body.word1, body.word2)
    )


@router.get("/health", response_model=HealthResponse)
def health(models: Models) -> HealthResponse:
    """Which models are loaded; "degraded" when any is not (its routes answer 503)."""
    statuses = {name: ModelStatus(loaded=models.loaded[name], detail=models.details[name]) for name in models.loaded}
    return HealthResponse(status="ok" if all(models.loaded.values()) else "degraded", models=statuses)
