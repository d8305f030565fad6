"""What every FastAPI app of the service shares: error bodies as documented, 422 answers that can always be encoded.

FastAPI's default handler echoes the offending input back; NaN, Infinity or a lone UTF-16 surrogate
in it cannot be encoded as JSON, and the 422 turns into a 500. This handler makes the echo safe.

Error bodies: `ErrorBody` (`detail` a sentence) for every error the routes raise themselves;
`UnprocessableBody` for a 422, whose `detail` is a sentence (a check a route makes, such as the
compute limit) or FastAPI's list of field errors (a body or parameter that fails its schema).
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field


class ErrorBody(BaseModel):
    detail: str = Field(description="what went wrong, in a sentence")


class FieldError(BaseModel):
    """One entry of a 422's `detail` list (pydantic's error, as FastAPI reports it)."""

    model_config = ConfigDict(extra="allow")

    loc: list[str | int] = Field(description='where: ["body", "num_images"], ["path", "k"], ...')
    msg: str
    type: str


class UnprocessableBody(BaseModel):
    detail: str | list[FieldError] = Field(
        description="a sentence (a limit a route checks), or one entry per field that fails its schema"
    )


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
