"""API keys, job ownership, rate limits, queue backpressure, compute budget and body size."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.integration.stack import free_port

ALPHA, BETA = {"Authorization": "Bearer alpha-key"}, {"X-API-Key": "beta-key"}


@pytest.fixture
def settings(redis_url: str) -> GatewaySettings:
    Redis.from_url(redis_url).flushdb()
    return GatewaySettings(
        redis_url=redis_url, text_service_url=f"http://127.0.0.1:{free_port()}", api_keys="alpha-key, beta-key",
        rate_limit_per_minute=4, max_queue_depth=100, max_compute=2000, max_body_bytes=1024,
    )  # type: ignore[arg-type]  # fmt: skip


@pytest.fixture
def client(settings: GatewaySettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_keys_come_from_a_comma_separated_list(settings: GatewaySettings) -> None:
    assert settings.api_keys == ["alpha-key", "beta-key"]


def test_generation_needs_a_key_and_health_does_not(client: TestClient) -> None:
    assert client.post("/generate/diffusion", json={"steps": 10}).status_code == 401
    assert client.post("/generate/diffusion", json={"steps": 10}, headers={"X-API-Key": "nope"}).status_code == 401
    assert client.post("/generate/diffusion", json={"steps": 10}, headers=ALPHA).status_code == 202
    for path in ("/health", "/metrics", "/models/info"):
        assert client.get(path).status_code == 200, path


def test_a_job_is_visible_only_to_the_key_that_made_it(client: TestClient) -> None:
    job_id = client.post("/generate/ebm", json={"steps": 10}, headers=BETA).json()["job_id"]
    assert client.get(f"/jobs/{job_id}", headers=BETA).status_code == 200
    for headers in (ALPHA, {}):
        assert client.get(f"/jobs/{job_id}", headers=headers).status_code in (404, 401)
    assert client.get(f"/jobs/{job_id}", headers=ALPHA).status_code == 404  # not 403: the id leaks nothing
    assert client.get(f"/jobs/{job_id}/grid.png", headers=ALPHA).status_code == 404
    assert client.delete(f"/jobs/{job_id}", headers=ALPHA).status_code == 404
    assert client.delete(f"/jobs/{job_id}", headers=BETA).json()["status"] == "canceled"


def test_rate_limit_per_key_answers_429_with_retry_after(client: TestClient) -> None:
    codes = [client.post("/generate/diffusion", json={"steps": 5}, headers=BETA).status_code for _ in range(4)]
    assert codes == [202] * 4
    limited = client.post("/generate/diffusion", json={"steps": 5}, headers=BETA)
    assert limited.status_code == 429 and 1 <= int(limited.headers["Retry-After"]) <= 60
    assert client.post("/generate/ebm", json={"steps": 5}, headers=ALPHA).status_code == 202  # another key's budget


def test_a_full_queue_answers_429(settings: GatewaySettings) -> None:
    settings = settings.model_copy(update={"api_keys": [], "rate_limit_per_minute": 0, "max_queue_depth": 3})
    with TestClient(create_app(settings)) as client:
        codes = [client.post("/generate/diffusion", json={"steps": 5}).status_code for _ in range(4)]
        assert codes == [202, 202, 202, 429]
        full = client.post("/generate/diffusion", json={"steps": 5})
        assert "queue is full" in full.json()["detail"] and full.headers["Retry-After"]
        assert client.post("/generate/ebm", json={"steps": 5}).status_code == 202  # per model


def test_compute_budget_is_422_naming_the_limit(client: TestClient) -> None:
    response = client.post("/generate/diffusion", json={"num_images": 4, "steps": 1000}, headers=ALPHA)
    assert response.status_code == 422 and "4000" in response.json()["detail"] and "2000" in response.json()["detail"]


def test_oversized_bodies_are_413(client: TestClient) -> None:
    response = client.post("/generate/diffusion", content=b'{"steps": 5, "pad": "' + b"x" * 2000 + b'"}',
                           headers={**ALPHA, "content-type": "application/json"})  # fmt: skip
    assert response.status_code == 413


def test_chunked_bodies_are_counted_as_they_arrive(client: TestClient) -> None:
    """No Content-Length: the body limit reads the chunks, and hands a small body on intact."""

    def chunks(body: bytes) -> Iterator[bytes]:
        yield from (body[k : k + 100] for k in range(0, len(body), 100))

    headers = {**ALPHA, "content-type": "application/json"}
    big = client.post("/generate/diffusion", content=chunks(b'{"steps": 5, "pad": "' + b"x" * 2000 + b'"}'),
                      headers=headers)  # fmt: skip
    assert big.status_code == 413
    small = client.post("/generate/diffusion", content=chunks(b'{"steps": 5, "num_images": 2}'), headers=headers)
    assert small.status_code == 202
    assert client.get(f"/jobs/{small.json()['job_id']}", headers=ALPHA).json()["parameters"]["num_images"] == 2
