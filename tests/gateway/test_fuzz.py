"""Schemathesis fuzzes the gateway from its own OpenAPI schema: every answer is documented and matches its schema.

In-process against a real Redis (tests/gateway/conftest.py) and a stub of the text service behind the
gateway's proxy (the same shared schemas, canned answers), so the legacy routes answer 200 and 422 too.
Requests are drawn from the schema (valid ones) and against it (invalid ones); bounded: EXAMPLES_PER_OPERATION
generated requests per operation, no deadline per example (about 10 s in all).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import checks
from schemathesis.generation import GenerationMode

from gateway.app import create_app
from gateway.deps import get_text_client
from gateway.settings import GatewaySettings
from shared.service.http import install_validation_handler
from shared.text.schemas import (
    EmbedRequest,
    EmbedResponse,
    GenerateRequest,
    GenerateResponse,
    HealthResponse,
    ModelStatus,
    RNNGenerateRequest,
    SimilarityRequest,
    SimilarityResponse,
)
from tests.integration.stack import ROOT

EXAMPLES_PER_OPERATION = 20  # a bounded sample in the suite; raise it for a soak run
CHECKS = [  # every response: no 5xx, a documented status, its documented content type, body schema and headers
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


def stub_text_service() -> FastAPI:
    """The text service's API with canned answers: a start word "zzz..." is unknown (422 with a sentence)."""
    stub = FastAPI()
    install_validation_handler(stub)

    def known(word: str) -> str:
        if word.startswith("zzz"):
            raise HTTPException(422, f"unknown start word {word!r}")
        return word

    @stub.post("/generate")
    def generate(body: GenerateRequest) -> GenerateResponse:
        return GenerateResponse(generated_text=known(body.start_word) + " and so on")

    @stub.post("/generate_with_rnn")
    def generate_with_rnn(body: RNNGenerateRequest) -> GenerateResponse:
        return GenerateResponse(generated_text=known(body.start_word) + " and so on")

    @stub.post("/embed")
    def embed(body: EmbedRequest) -> EmbedResponse:
        return EmbedResponse(word=body.word, embedding=[0.6, 0.8], dim=2)

    @stub.post("/similarity")
    def similarity(body: SimilarityRequest) -> SimilarityResponse:
        return SimilarityResponse(word1=body.word1, word2=body.word2, similarity=0.5)

    @stub.get("/health")
    def health() -> HealthResponse:
        return HealthResponse(status="ok", models={"bigram": ModelStatus(loaded=True, detail="stub")})

    return stub


def gateway_with_stub(redis_url: str, **settings: Any) -> FastAPI:
    """The gateway, its text routes proxied to the stub text service."""
    application = create_app(GatewaySettings(redis_url=redis_url, **settings))
    stub = httpx.AsyncClient(transport=httpx.ASGITransport(stub_text_service()), base_url="http://text-service")
    # an override, not app.state: schemathesis runs the lifespan again, which makes a new client
    application.dependency_overrides[get_text_client] = lambda: stub
    return application


@pytest.fixture(scope="module")
def app(redis_url: str) -> Iterator[FastAPI]:
    application = gateway_with_stub(redis_url)
    with TestClient(application):  # runs the lifespan: Redis exists
        yield application


def test_the_published_422_is_what_the_handlers_send(app: FastAPI) -> None:
    schema = TestClient(app).get("/openapi.json").json()
    for path in ("/generate/diffusion", "/generate/ebm", "/generate", "/generate_with_rnn", "/embed", "/similarity"):
        ref = schema["paths"][path]["post"]["responses"]["422"]["content"]["application/json"]["schema"]["$ref"]
        detail = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]["detail"]
        assert {"type": "string"} in detail["anyOf"], path  # a sentence (a limit, an unknown word) ...
        assert any(option.get("type") == "array" for option in detail["anyOf"]), path  # ... or field errors


def test_the_gateway_imports_no_code_of_the_text_service() -> None:
    probe = "import sys, gateway.app; print(sorted(m for m in sys.modules if m.split('.')[0] == 'text_service'))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert loaded.stdout.strip() == "[]"


def fuzz_every_operation(app: FastAPI, examples: int) -> list[tuple[str, int]]:
    """Generated requests (valid and invalid) to every operation; every answer checked against the schema."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15  # every route of the API is in the schema (/jobs/{job_id}/events included)
    calls: list[tuple[str, int]] = []

    for operation in operations:
        # /ready answers 503 while no worker listens (none does here): documented, and its body is still checked
        wanted = [check for check in CHECKS if operation.path != "/ready" or check is not checks.not_a_server_error]

        @given(case=st.one_of(operation.as_strategy(mode) for mode in GenerationMode))  # valid and invalid
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
        def fuzz(case: schemathesis.Case) -> None:
            response = case.call()
            calls.append((case.path, response.status_code))
            case.validate_response(response, checks=wanted)  # noqa: B023 - called within this iteration

        fuzz()
    assert len(calls) > 3 * len(operations)  # the fuzzer really sent requests
    return calls


def test_every_answer_matches_the_schema(app: FastAPI) -> None:
    calls = fuzz_every_operation(app, EXAMPLES_PER_OPERATION)
    codes = [code for _, code in calls]
    assert 422 in codes and any(code < 300 for code in codes)
    legacy = {code for path, code in calls if path in ("/generate", "/embed", "/similarity", "/generate_with_rnn")}
    assert 200 in legacy and 422 in legacy  # the proxied routes were exercised past validation


def test_every_answer_matches_the_schema_with_api_keys_on(redis_url: str) -> None:
    """Keys on and none sent: the job and generation routes answer 401, as documented; the rest as before."""
    keyed = gateway_with_stub(redis_url, api_keys=["k1"])
    with TestClient(keyed):
        calls = fuzz_every_operation(keyed, 5)
    assert {code for path, code in calls if path.startswith(("/jobs", "/generate/"))} <= {401, 400, 413, 422}
    assert 401 in {code for _, code in calls}
