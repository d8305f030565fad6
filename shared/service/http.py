"""What every FastAPI app of the service shares: 422 answers that can always be encoded.

FastAPI's default handler echoes the offending input back; NaN, Infinity or a lone UTF-16 surrogate
in it cannot be encoded as JSON, and the 422 turns into a 500. This handler makes the echo safe.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


def json_safe(value: Any) -> Any:
    """value with non-finite floats as strings ("nan", "inf") and unencodable characters replaced."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {json_safe(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": json_safe(jsonable_encoder(exc.errors()))}, status.HTTP_422_UNPROCESSABLE_CONTENT)


def install_validation_handler(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, invalid_request)  # type: ignore[arg-type]
