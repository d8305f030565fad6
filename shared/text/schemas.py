"""Request and response bodies of the legacy text routes, with the bounds that turn bad input into a 422.

Shared by the text service (which answers them) and the gateway (which validates, documents and proxies
them), so neither service imports the other's code."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_LENGTH = 500  # tokens generated per request
MAX_TEXT_CHARS = 200  # start words and texts to embed
MAX_TEMPERATURE = 5.0
MAX_SEED = 2**63 - 1
BIGRAM, LSTM, EMBEDDINGS = "bigram", "lstm", "embeddings"  # the models the text service loads
ROUTE_MODELS = {  # each text route -> the model it needs (503 while that model is not loaded)
    "/generate": BIGRAM,
    "/generate_with_rnn": LSTM,
    "/embed": EMBEDDINGS,
    "/similarity": EMBEDDINGS,
}


class _Request(BaseModel):
    model_config = ConfigDict(str_strip_whitespace=True)


class GenerateRequest(_Request):
    start_word: str = Field(
        min_length=1,
        max_length=MAX_TEXT_CHARS,
        description="a word (or a few) from the book's vocabulary to start from",
        examples=["the"],
    )
    length: int = Field(default=20, ge=1, le=MAX_LENGTH, description="tokens to generate after the start")
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="same seed, same text")


class RNNGenerateRequest(GenerateRequest):
    temperature: float = Field(default=1.0, gt=0.0, le=MAX_TEMPERATURE, description="softmax temperature")


class GenerateResponse(BaseModel):
    generated_text: str


class EmbedRequest(_Request):
    word: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, description="a word or a short text", examples=["sea"])


class EmbedResponse(BaseModel):
    word: str
    embedding: list[float]
    dim: int


class SimilarityRequest(_Request):
    word1: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, examples=["prison"])
    word2: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, examples=["jail"])


class SimilarityResponse(BaseModel):
    word1: str
    word2: str
    similarity: float = Field(description="cosine similarity of the two embeddings, in [-1, 1]")


class ModelStatus(BaseModel):
    loaded: bool
    detail: str = Field(description="what is loaded, or why it is not")


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"]
    models: dict[str, ModelStatus]
