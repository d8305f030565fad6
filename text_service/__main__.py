"""`python -m text_service`: serve the text routes with uvicorn (TEXT_HOST, TEXT_PORT, ... configure it)."""

from __future__ import annotations

import logging

import uvicorn

from text_service.app import create_app
from text_service.settings import get_settings


def main() -> int:
    settings = get_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level.lower())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
