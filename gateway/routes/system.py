"""Model info, liveness and readiness."""

from __future__ import annotations

import logging

import httpx
from anyio import to_thread
from fastapi import APIRouter, Response, status
from redis.exceptions import RedisError

from gateway.deps import RedisDep, StoreDep, TextClientDep
from gateway.jobs import JobStore
from gateway.responses import REDIS_DOWN
from gateway.schemas import Health, ModelsInfo, Readiness, TextServiceState
from shared.service import keys
from shared.text.schemas import ROUTE_MODELS

logger = logging.getLogger(__name__)
router = APIRouter(tags=["system"])
TEXT_HEALTH_TIMEOUT = 1.0  # seconds /ready waits for the text service's /health


@router.get("/models/info", response_model=ModelsInfo, responses=REDIS_DOWN)
def models_info(store: StoreDep) -> ModelsInfo:
    """What each live worker loaded (architecture, parameters, schedule, weights sha256, device, training),
    and the queue length and worker count per queue."""
    return ModelsInfo(models=store.models_info(), queues={m: store.queue_info(m) for m in keys.QUEUES})


@router.get("/health", response_model=Health)
async def health() -> Health:
    """Liveness: the gateway process answers (async: it answers even while every thread waits on Redis)."""
    return Health(status="ok")


def _queues(redis: RedisDep, store: JobStore) -> dict[str, int] | None:
    """Workers per queue; None when Redis does not answer."""
    try:
        redis.ping()
        return {m: store.queue_info(m).workers for m in keys.QUEUES}
    except RedisError:
        return None


async def text_service_state(client: httpx.AsyncClient) -> TextServiceState:
    """The text service's own /health, read with a short timeout; which legacy routes can answer."""
    try:
        answer = await client.get("/health", timeout=TEXT_HEALTH_TIMEOUT)
        models = answer.json()["models"]
        loaded = {name: bool(model["loaded"]) for name, model in models.items()}
    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return TextServiceState(
            status="unavailable", routes=dict.fromkeys(ROUTE_MODELS, False), detail=f"{type(exc).__name__}: {exc}"
        )
    routes = {route: loaded.get(model, False) for route, model in ROUTE_MODELS.items()}
    return TextServiceState(status="ok" if all(routes.values()) else "degraded", routes=routes)


@router.get("/ready", response_model=Readiness, responses={503: {"model": Readiness, "description": "not ready"}})
async def ready(redis: RedisDep, store: StoreDep, text: TextClientDep, response: Response) -> Readiness:
    """Readiness: Redis answers and each queue has at least one worker. The legacy text service is reported
    beside (`text_service`: its state and which text routes can answer) but never makes the gateway unready:
    the image routes do not depend on it."""
    workers = await to_thread.run_sync(_queues, redis, store)
    text_state = await text_service_state(text)
    ok = workers is not None and all(workers.values())
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Readiness(
        status="ready" if ok else "degraded", redis=workers is not None, workers=workers or {}, text_service=text_state
    )
