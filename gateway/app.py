"""The gateway application: `create_app()` wires settings, Redis, the text-service client and the routers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from anyio import to_thread
from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError
from rq.exceptions import InvalidJobOperation, NoSuchJobError

from gateway.metrics import setup_metrics
from gateway.middleware import BodyLimitMiddleware
from gateway.routes import events, generate, jobs, legacy, system, ui
from gateway.settings import GatewaySettings, get_settings
from shared.service.http import install_validation_handler

logger = logging.getLogger(__name__)


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        timeout = settings.redis_timeout  # a hung Redis: a 503 after this long, not a request that waits
        app.state.redis = Redis.from_url(settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)
        # the poll path (GET /jobs/{id}) on the event loop: no thread handoff per request
        app.state.poll_redis = AsyncRedis.from_url(
            settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout, max_connections=64
        )
        # for the event streams: XREAD blocks up to a heartbeat on a connection of its own, no thread held
        app.state.aredis = AsyncRedis.from_url(
            settings.redis_url, socket_timeout=settings.sse_heartbeat_seconds + 5, socket_connect_timeout=2,
            max_connections=settings.sse_max_streams_per_process + 16,
        )  # fmt: skip
        app.state.text_client = httpx.AsyncClient(
            base_url=settings.text_service_url, timeout=settings.text_service_timeout
        )
        to_thread.current_default_thread_limiter().total_tokens = settings.threads
        yield
        await app.state.text_client.aclose()
        await app.state.aredis.aclose()
        await app.state.poll_redis.aclose()
        app.state.redis.close()

    app = FastAPI(
        title="cifar-genservice",
        version="0.1.0",
        description="CIFAR-10 image generation with a DDPM diffusion model and an energy-based model, as jobs.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.open_streams = 0  # event streams open in this process (gateway/routes/events.py)
    for module in (generate, jobs, events, system, legacy):
        app.include_router(module.router)
    ui.mount(app)
    setup_metrics(app)

    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)  # outermost: before the metrics

    install_validation_handler(app)

    @app.exception_handler(NoSuchJobError)
    async def job_gone(request: Request, exc: NoSuchJobError) -> JSONResponse:
        return JSONResponse({"detail": "no such job (it may have expired)"}, status.HTTP_404_NOT_FOUND)

    @app.exception_handler(InvalidJobOperation)
    async def job_conflict(request: Request, exc: InvalidJobOperation) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status.HTTP_409_CONFLICT)

    @app.exception_handler(RedisError)
    async def redis_down(request: Request, exc: RedisError) -> JSONResponse:
        logger.warning("redis error on %s: %s", request.url.path, exc)
        return JSONResponse(
            {"detail": "the job store (Redis) is unavailable; try again shortly"}, status.HTTP_503_SERVICE_UNAVAILABLE
        )

    return app
