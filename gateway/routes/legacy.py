"""The legacy Module 6 text routes, proxied unchanged to text_service (its own process)."""

from __future__ import annotations

import logging

import httpx
from fastapi import APIRouter, HTTPException, Request, Response, status

from gateway.deps import TextClientDep
from gateway.schemas import ErrorBody

logger = logging.getLogger(__name__)
router = APIRouter(tags=["legacy text"])
LEGACY_PATHS = ("/generate", "/generate_with_rnn", "/embed", "/similarity")


async def _proxy(path: str, request: Request, client: httpx.AsyncClient) -> Response:
    try:
        upstream = await client.post(
            path,
            content=await request.body(),
            headers={"content-type": request.headers.get("content-type", "application/json")},
        )
    except httpx.HTTPError as exc:
        logger.warning("text service unreachable for %s: %s", path, exc)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "the text service is unavailable; try again later"
        ) from exc
    return Response(upstream.content, status_code=upstream.status_code, media_type=upstream.headers.get("content-type"))


def _route(path: str) -> None:
    async def proxy(request: Request, client: TextClientDep) -> Response:
        return await _proxy(path, request, client)

    proxy.__name__ = "legacy" + path.replace("/", "_")
    router.add_api_route(
        path, proxy, methods=["POST"], response_class=Response,
        summary=f"POST {path} on the text service (request and response unchanged)",
        responses={503: {"model": ErrorBody, "description": "the text service is down"}},
    )  # fmt: skip


for _path in LEGACY_PATHS:
    _route(_path)
