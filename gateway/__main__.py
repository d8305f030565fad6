"""`python -m gateway`: serve the API on GENSERVICE_HOST:GENSERVICE_PORT (default 0.0.0.0:8000) in
GENSERVICE_WORKERS processes, with GENSERVICE_SERVER: granian (HTTP in Rust, beside the Python event loop)
or uvicorn (uvloop and httptools when installed, as the gateway extra does)."""

from __future__ import annotations

import gc
import logging
from typing import Any

from fastapi import FastAPI

from gateway.app import create_app
from gateway.settings import GatewaySettings, get_settings
from shared.service.logs import configure_logging


def app() -> FastAPI:
    """The app of one worker process (the server imports this factory in each one it starts)."""
    settings = get_settings()
    configure_logging(settings.log_level)
    # configure_logging hands uvicorn's access logger to the root logger again, after uvicorn.run detached it
    # for access_log=False: without this, the lines (a fifth of a poll's CPU) were written anyway
    logging.getLogger("uvicorn.access").disabled = not settings.access_log
    served = create_app(settings)
    # Everything imported and built so far lives as long as the process: move it out of the collector's
    # reach (gc.freeze, CPython >= 3.7). Without it, each full collection walked the ~10^5 objects of
    # FastAPI, pydantic, redis-py and RQ while requests waited: p99 52-61 ms at a p50 of 8-13 ms under
    # load, 13-18 ms with it (BENCHMARKS.md, item 3).
    gc.collect()
    gc.freeze()
    return served


def granian_logging(settings: GatewaySettings) -> dict[str, Any]:
    """Granian's own loggers write JSON lines too."""
    handler = {"class": "logging.StreamHandler", "formatter": "json"}
    logger = {"handlers": ["json"], "level": settings.log_level.upper(), "propagate": False}
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"json": {"()": "shared.service.logs.JsonFormatter"}}, "handlers": {"json": handler},
        "loggers": {"_granian": logger, "granian.access": logger},
    }  # fmt: skip


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    if settings.server == "granian":
        from granian import Granian
        from granian.constants import Interfaces, Loops

        Granian(
            "gateway.__main__:app", address=settings.host, port=settings.port, interface=Interfaces.ASGI,
            workers=settings.workers, factory=True, loop=Loops.auto, log_access=settings.access_log,
            log_dictconfig=granian_logging(settings),
        ).serve()  # fmt: skip
        return
    import uvicorn

    uvicorn.run(
        "gateway.__main__:app", factory=True, host=settings.host, port=settings.port, workers=settings.workers,
        access_log=settings.access_log, log_config=None,
    )  # fmt: skip


if __name__ == "__main__":
    main()
