"""FastAPI dependencies as Annotated aliases.

They are `async def` although they do no I/O: FastAPI runs a plain `def` dependency in the threadpool,
one thread handoff per dependency and request, which costs more than the dependency itself.
"""

from __future__ import annotations

from typing import Annotated

import httpx
from fastapi import Depends, Request
from redis import Redis

from gateway.jobs import JobStore
from gateway.settings import GatewaySettings


async def get_app_settings(request: Request) -> GatewaySettings:
    """The settings `create_app` was built with (not a `dependency_overrides` entry: FastAPI re-analyses
    an overridden dependency's signature on every request)."""
    return request.app.state.settings


async def get_redis(request: Request) -> Redis:
    return request.app.state.redis


async def get_text_client(request: Request) -> httpx.AsyncClient:
    return request.app.state.text_client


SettingsDep = Annotated[GatewaySettings, Depends(get_app_settings)]
RedisDep = Annotated[Redis, Depends(get_redis)]
TextClientDep = Annotated[httpx.AsyncClient, Depends(get_text_client)]


async def get_store(request: Request, redis: RedisDep, settings: SettingsDep) -> JobStore:
    return JobStore(redis, settings, request.app.state.poll_redis)


StoreDep = Annotated[JobStore, Depends(get_store)]
