"""Gateway settings: the queue settings every process shares, plus what only the gateway needs."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from shared.service.settings import QueueSettings


class GatewaySettings(QueueSettings):
    model_config = SettingsConfigDict(env_prefix="GENSERVICE_", extra="ignore")

    text_service_url: str = Field("http://localhost:8001", description="where the legacy text routes are proxied")
    text_service_timeout: float = Field(30.0, gt=0, description="seconds to wait for the text service")
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=1, le=65535)
    server: Literal["granian", "uvicorn"] = Field(
        "granian",
        description="the ASGI server of `python -m gateway`: granian parses HTTP in Rust threads beside the Python "
        "event loop (more requests a second on the same cores: BENCHMARKS.md, item 3); uvicorn is the fallback",
    )
    workers: int = Field(
        1,
        ge=1,
        description="uvicorn worker processes (one Python process answers ~1 core of requests); "
        "HTTP metrics at /metrics are then per process",
    )
    threads: int = Field(
        4,
        ge=1,
        description="threads per process for the sync routes (Redis calls); few threads contend less for "
        "the GIL: lower tail latency and more requests a second than anyio's 40",
    )
    redis_timeout: float = Field(
        2.0,
        gt=0,
        le=60,
        description="seconds one Redis call of a request may take (connect, or wait for the answer) before the "
        "request answers 503: a hung Redis costs a client this long, and never blocks the event loop",
    )
    access_log: bool = Field(True, description="one JSON log line per request (about a fifth of the CPU of a job poll)")
    # limits and backpressure
    max_queue_depth: int = Field(200, ge=1, description="queued jobs per model before new ones get 429")
    max_compute: int = Field(
        16 * 1000, ge=1, description="num_images x steps a single request may ask for (16 full DDPM images)"
    )
    max_body_bytes: int = Field(16 * 1024, ge=256, description="larger request bodies get 413")
    # access
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated keys; empty: the API is open"
    )
    rate_limit_per_minute: int = Field(0, ge=0, description="generation requests per key and minute; 0: no limit")
    # server-sent events (GET /jobs/{id}/events)
    sse_heartbeat_seconds: float = Field(
        15.0,
        gt=0,
        le=300,
        description="a comment line this often on a quiet stream (keeps proxies from closing it); "
        "the job is re-read then too",
    )
    sse_max_seconds: int = Field(
        3600, ge=1, description="an open stream closes after this long (the client reconnects with Last-Event-ID)"
    )
    sse_max_streams_per_key: int = Field(
        8, ge=1, description="open event streams per API key (per client address when keys are off), all replicas"
    )
    sse_max_streams_per_process: int = Field(256, ge=1, description="open event streams per gateway process")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value


@lru_cache
def get_settings() -> GatewaySettings:
    return GatewaySettings()
