"""Gateway settings: the queue settings every process shares, plus what only the gateway needs."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.service.settings import QueueSettings


class GatewaySettings(QueueSettings):
    model_config = SettingsConfigDict(env_prefix="GENSERVICE_", extra="ignore")

    text_service_url: str = Field("http://localhost:8001", description="where the legacy text routes are proxied")
    text_service_timeout: float = Field(30.0, gt=0, description="seconds to wait for the text service")
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=1, le=65535)


@lru_cache
def get_settings() -> GatewaySettings:
    return GatewaySettings()
