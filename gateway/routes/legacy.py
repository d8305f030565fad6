"""The legacy Module 6 text routes, proxied unchanged to text_service (its own process).

The gateway validates each body with the text service's own schemas (so the OpenAPI page documents
them and a bad body never leaves the gateway), forwards it, and returns the text service's answer,
status code included. No `from __future__ import annotations` here: FastAPI must see the schema
classes themselves in the signatures built below.
"""

import logging
from typing import Annotated

import httpx
from fastapi import APIRouter, Body, HTTPException, Response, status
from pydantic import BaseModel

from gateway.deps import TextClientDep
from gateway.schemas import ErrorBody
from text_service.schemas import (
    EmbedRequest,
    EmbedResponse,
    GenerateRequest,
    GenerateResponse,
    RNNGenerateRequest,
    SimilarityRequest,
    SimilarityResponse,
)

logger = logging.getLogger(__name__)
router = APIRouter(tags=["legacy text"])
LEGACY_ROUTES: dict[str, tuple[type[BaseModel], type[BaseModel], str]] = {
    "/generate": (GenerateRequest, GenerateResponse, "text from the bigram model"),
    "/generate_with_rnn": (RNNGenerateRequest, GenerateResponse, "text from the word LSTM"),
    "/embed": (EmbedRequest, EmbedResponse, "a pretrained sentence embedding of a word or short text"),
    "/similarity": (SimilarityRequest, SimilarityResponse, "cosine similarity of two words' embeddings"),
}


async def forward(path: str, body: BaseModel, client: httpx.AsyncClient) -> Response:
    try:
        upstream = await client.post(path, json=body.model_dump(mode="json", exclude_unset=True))
    except httpx.HTTPError as exc:
        logger.warning("text service unreachable for %s: %s", path, exc)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "the text service is unavailable; try again later"
        ) from exc
    return Response(upstream.content, status_code=upstream.status_code, media_type=upstream.headers.get("content-type"))


def add_route(path: str, request_model: type[BaseModel], response_model: type[BaseModel], summary: str) -> None:
    async def proxy(body: Annotated[request_model, Body()], client: TextClientDep) -> Response:  # type: ignore[valid-type]
        return await forward(path, body, client)

    proxy.__name__ = "legacy" + path.replace("/", "_")
    router.add_api_route(
        path, proxy, methods=["POST"], response_class=Response, summary=f"{summary} (proxied to the text service)",
        responses={
            200: {"model": response_model, "description": "the text service's answer"},
            422: {"model": ErrorBody, "description": "a field is out of bounds, or an unknown start word"},
            503: {"model": ErrorBody, "description": "the text service is down"},
        },
    )  # fmt: skip


for _path, (_request, _response, _summary) in LEGACY_ROUTES.items():
    add_route(_path, _request, _response, _summary)
