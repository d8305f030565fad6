"""Dependencies of the routes: the loaded models, or a 503 naming the model that is missing and why."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from shared.text.bigram import BigramModel
from shared.text.embeddings import Embedder
from shared.text.lstm import WordLSTM
from shared.text.tokenizer import WordTokenizer
from text_service.models import BIGRAM, EMBEDDINGS, LSTM, TextModels


def get_models(request: Request) -> TextModels:
    return request.app.state.models


Models = Annotated[TextModels, Depends(get_models)]


def _unavailable(models: TextModels, name: str) -> HTTPException:
    reason = models.details.get(name, "not loaded")
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=f"the {name} model is not available: {reason}")


def get_bigram(models: Models) -> tuple[BigramModel, WordTokenizer]:
    if models.bigram is None or models.bigram_tokenizer is None:
        raise _unavailable(models, BIGRAM)
    return models.bigram, models.bigram_tokenizer


def get_lstm(models: Models) -> tuple[WordLSTM, WordTokenizer]:
    if models.lstm is None or models.lstm_tokenizer is None:
        raise _unavailable(models, LSTM)
    return models.lstm, models.lstm_tokenizer


def get_embedder(models: Models) -> Embedder:
    if models.embedder is None:
        raise _unavailable(models, EMBEDDINGS)
    return models.embedder


Bigram = Annotated[tuple[BigramModel, WordTokenizer], Depends(get_bigram)]
LSTMModel = Annotated[tuple[WordLSTM, WordTokenizer], Depends(get_lstm)]
EmbedderDep = Annotated[Embedder, Depends(get_embedder)]
