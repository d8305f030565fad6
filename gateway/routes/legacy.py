"""The legacy Module 6 text routes, proxied unchanged to text_service (its own process).

The gateway validates each body with the schemas the text service uses (shared.text.schemas: the OpenAPI
page documents them and a bad body never leaves the gateway), forwards it, and returns the text
service's answer, status code included, when it is one the schema documents (200, 422, 503); any other
answer (a 500, a body that is not JSON) becomes a 502. No `from __future__ import annotations` here:
FastAPI must see the schema classes themselves in the signatures built below.
"""

import logging
from typing import Annotated

import httpx
from fastapi import APIRouter, Body, HTTPException, Response, status
from pydantic import BaseModel

from gateway.deps import TextClientDep
from gateway.responses import BODY, invalid
from shared.service.http import ErrorBody
from shared.text.schemas import (
    EmbedRequest,
    EmbedResponse,
    GenerateRequest,
    GenerateResponse,
    RNNGenerateRequest,
    SimilarityRequest,
    SimilarityResponse,
)

logger = logging.getLogger(__name__)
PASSED_THROUGH = (200, 422, 503)  # the text service's answers the schema documents
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
    media_type = upstream.headers.get("content-type", "")
    if upstream.status_code not in PASSED_THROUGH or not media_type.startswith("application/json"):
        logger.warning("text service answered %s (%s) for %s", upstream.status_code, media_type, path)
        raise HTTPException(
            status.HTTP_502_BAD_GATEWAY, f"the text service answered {upstream.status_code}; try again later"
        )
    return Response(upstream.content, status_code=upstream.status_code, media_type=media_type)


def add_route(path: str, request_model: type[BaseModel], response_model: type[BaseModel], summary: str) -> None:
    async def proxy(body: Annotated[request_model, Body()], client: TextClientDep) -> Response:  # type: ignore[valid-type]
        return await forward(path, body, client)

    proxy.__name__ = "legacy" + path.replace("/", "_")
    router.add_api_route(
        path, proxy, methods=["POST"], response_class=Response, summary=f"{summary} (proxied to the text service)",
        responses={
            200: {"model": response_model, "description": "the text service's answer"},
            **invalid("a field is out of bounds (a list of field errors), or an unknown start word (a sentence)"),
            **BODY,
            502: {"model": ErrorBody, "description": "the text service gave an answer it should not (e.g. a 500)"},
            503: {"model": ErrorBody, "description": "the text service is down, or the model behind the route is"},
        },
    )  # fmt: skip


for _path, (_request, _response, _summary) in LEGACY_ROUTES.items():
    add_route(_path, _request, _response, _summary)
