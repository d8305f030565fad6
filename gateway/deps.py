"""FastAPI dependencies as Annotated aliases."""

from __future__ import annotations

from typing import Annotated

import httpx
from fastapi import Depends, Request
from redis import Redis

from gateway.jobs import JobStore
from gateway.settings import GatewaySettings, get_settings


def get_redis(request: Request) -> Redis:
    return request.app.state.redis


def get_text_client(request: Request) -> httpx.AsyncClient:
    return request.app.state.text_client


SettingsDep = Annotated[GatewaySettings, Depends(get_settings)]
RedisDep = Annotated[Redis, Depends(get_redis)]
TextClientDep = Annotated[httpx.AsyncClient, Depends(get_text_client)]


def get_store(redis: RedisDep, settings: SettingsDep) -> JobStore:
    return JobStore(redis, settings)


StoreDep = Annotated[JobStore, Depends(get_store)]
