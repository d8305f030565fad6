"""Optional API keys, per-key rate limits and per-model backpressure.

With `GENSERVICE_API_KEYS` set, every generation and job route needs a key (`Authorization: Bearer <key>`
or `X-API-Key: <key>`); a job belongs to the key that created it, and other keys get a 404 for it, so
job ids leak nothing. Keys are never stored: jobs carry a short hash of theirs. Health, readiness,
metrics and the model info stay open.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from redis.asyncio import Redis as AsyncRedis

from gateway.deps import SettingsDep
from gateway.settings import GatewaySettings
from shared.service import keys
from shared.service.webhooks import RefusedDestinationError, check_url


def key_id(key: str) -> str:
    """What a job records about the key that created it: not the key itself."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return request.headers.get("x-api-key")


async def caller(request: Request, settings: SettingsDep) -> str | None:
    """The caller's key id, None when the API is open; 401 for a missing or unknown key (async: no I/O, so no
    threadpool handoff)."""
    if not settings.api_keys:
        return None
    key = presented_key(request)
    if key is None or not any(hmac.compare_digest(key, known) for known in settings.api_keys):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "a valid API key is required (Authorization: Bearer <key> or X-API-Key)",
            headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip
    return key_id(key)


Caller = Annotated[str | None, Depends(caller)]


async def rate_limit(redis: AsyncRedis, settings: GatewaySettings, who: str | None) -> None:
    """A fixed one-minute window per key, counted in Redis (shared by every gateway replica)."""
    if not settings.rate_limit_per_minute:
        return
    bucket = f"{keys.PREFIX}:rate:{who or 'anonymous'}"
    async with redis.pipeline() as pipe:
        pipe.set(bucket, 0, ex=60, nx=True)  # opens the window (works on Redis 6.2, unlike EXPIRE NX)
        pipe.incr(bucket)
        pipe.ttl(bucket)
        _, count, ttl = await pipe.execute()
    if count > settings.rate_limit_per_minute:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS, f"rate limit of {settings.rate_limit_per_minute} requests a minute",
            headers={"Retry-After": str(max(1, int(ttl)))},
        )  # fmt: skip


def check_capacity(queued: int, settings: GatewaySettings, model: str) -> None:
    if queued >= settings.max_queue_depth:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS, f"the {model} queue is full ({queued} jobs waiting); try again later",
            headers={"Retry-After": "30"},
        )  # fmt: skip


def check_compute(num_images: int, steps: int | None, settings: GatewaySettings) -> None:
    if steps is not None and num_images * steps > settings.max_compute:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"num_images x steps = {num_images * steps} exceeds the limit of {settings.max_compute} per request",
        )


def check_webhook(url: str, settings: GatewaySettings) -> None:
    """A 422 for a webhook this service may not call: webhooks off, or a host off the allow-list (where that is
    known without DNS: the URL is resolved and checked again each time it is called)."""
    if not settings.webhooks_enabled:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "webhooks are off on this service (GENSERVICE_WEBHOOK_ALLOW and GENSERVICE_WEBHOOK_SECRET unset)",
        )
    try:
        check_url(url, settings.webhook_allow)
    except RefusedDestinationError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"webhook refused: {exc}") from exc
