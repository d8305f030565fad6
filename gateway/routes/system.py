"""Model info, liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from redis.exceptions import RedisError

from gateway.deps import RedisDep, StoreDep
from gateway.schemas import Health, ModelsInfo, Readiness
from shared.service import keys

router = APIRouter(tags=["system"])


@router.get("/models/info", response_model=ModelsInfo)
def models_info(store: StoreDep) -> ModelsInfo:
    """What each live worker loaded (architecture, parameters, schedule, weights sha256, device, training),
    and the queue length and worker count per queue."""
    return ModelsInfo(models=store.models_info(), queues={m: store.queue_info(m) for m in keys.QUEUES})


@router.get("/health", response_model=Health)
async def health() -> Health:
    """Liveness: the gateway process answers (async: it answers even while every thread waits on Redis)."""
    return Health(status="ok")


@router.get("/ready", response_model=Readiness, responses={503: {"model": Readiness}})
def ready(redis: RedisDep, store: StoreDep, response: Response) -> Readiness:
    """Readiness: Redis answers and each queue has at least one worker."""
    try:
        redis.ping()
        workers = {m: store.queue_info(m).workers for m in keys.QUEUES}
    except RedisError:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return Readiness(status="degraded", redis=False, workers={})
    ok = all(workers.values())
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Readiness(status="ready" if ok else "degraded", redis=True, workers=workers)
