"""The text service's FastAPI app. `create_app` builds it; the models load in the lifespan (once per
process, at start-up), never at import."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI

from shared.service.http import install_validation_handler
from text_service.models import load_models
from text_service.routes import router
from text_service.settings import Settings, get_settings

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        started = time.perf_counter()
        app.state.models = load_models(settings)
        loaded = [name for name, ok in app.state.models.loaded.items() if ok]
        logger.info("text service ready in %.1f s with %s", time.perf_counter() - started, ", ".join(loaded) or "none")
        yield

    app = FastAPI(
        title="Module 6 text service",
        description="Bigram and LSTM text generation and word embeddings, trained on The Count of Monte Cristo.",
        version="1.0.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.include_router(router)
    install_validation_handler(app)
    return app
