"""The documented error answers of the routes, defined once so the OpenAPI schema says what they send.

Every route lists each status it can answer besides its success, with the body's model: the
schemathesis run in tests/gateway/test_fuzz.py checks every answer against this.
"""

from __future__ import annotations

from typing import Any

from shared.service.http import ErrorBody, UnprocessableBody

Responses = dict[int | str, dict[str, Any]]

AUTH: Responses = {401: {"model": ErrorBody, "description": "API keys are on and none (or an unknown one) was given"}}
REDIS_DOWN: Responses = {503: {"model": ErrorBody, "description": "the job store (Redis) is unavailable"}}
BAD_BODY: Responses = {400: {"model": ErrorBody, "description": "the body cannot be parsed (e.g. not UTF-8)"}}
TOO_LARGE: Responses = {413: {"model": ErrorBody, "description": "the request body is over the size limit"}}
NOT_FOUND: Responses = {404: {"model": ErrorBody, "description": "no such job (or its results expired)"}}
NOT_FINISHED: Responses = {409: {"model": ErrorBody, "description": "the job is not (or no longer) in a state for it"}}
BUSY: Responses = {
    429: {"model": ErrorBody, "description": "a limit is reached (queue depth, rate, open streams); see Retry-After"}
}


def invalid(description: str) -> Responses:
    """A 422: FastAPI's list of field errors, or a sentence from a check the route makes itself."""
    return {422: {"model": UnprocessableBody, "description": description}}


BODY: Responses = {**BAD_BODY, **TOO_LARGE}  # what every route with a body may answer
JOB_ROUTE: Responses = {**AUTH, **NOT_FOUND, **REDIS_DOWN}  # what every /jobs/{job_id} route may answer
