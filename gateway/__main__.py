"""`python -m gateway`: serve the API with uvicorn on GENSERVICE_HOST:GENSERVICE_PORT (default 0.0.0.0:8000)."""

from __future__ import annotations

import uvicorn

from gateway.app import create_app
from gateway.settings import get_settings
from shared.service.logs import configure_logging


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None)


if __name__ == "__main__":
    main()
