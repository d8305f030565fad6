"""`python -m gateway`: serve the API with uvicorn on GENSERVICE_HOST:GENSERVICE_PORT (default 0.0.0.0:8000),
in GENSERVICE_WORKERS processes (uvloop and httptools when installed, as the gateway extra does)."""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI

from gateway.app import create_app
from gateway.settings import get_settings
from shared.service.logs import configure_logging


def app() -> FastAPI:
    """The app of one worker process (uvicorn imports this factory in each one it starts)."""
    settings = get_settings()
    configure_logging(settings.log_level)
    return create_app(settings)


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    uvicorn.run(
        "gateway.__main__:app", factory=True, host=settings.host, port=settings.port, workers=settings.workers,
        access_log=settings.access_log, log_config=None,
    )  # fmt: skip


if __name__ == "__main__":
    main()
