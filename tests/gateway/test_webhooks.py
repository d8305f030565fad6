"""The webhook sender (gateway/webhooks.py) in-process against a real Redis and a receiver on loopback:
signed deliveries with retries, a destination refused when it is resolved, a dead receiver, the record the
job status shows; and the gateway's own checks of a request's webhook."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient
from redis import Redis

import gateway.webhooks
from gateway.app import create_app
from gateway.jobs import JobStore
from gateway.settings import GatewaySettings
from gateway.webhooks import Sender
from shared.service import keys
from shared.service.settings import QueueSettings
from tests.integration.receiver import SECRET, Receiver
from tests.integration.stack import free_port


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    live = Receiver(answers=[500])  # the first POST fails: it is retried
    yield live
    live.close()


def sender_settings(redis_url: str, **extra: Any) -> QueueSettings:
    return QueueSettings(
        redis_url=redis_url, webhook_allow=["127.0.0.1/32", "hooks.example.test"], webhook_secret=SECRET,
        webhook_backoff_seconds=0.05, webhook_max_attempts=3, webhook_timeout=2, public_url="http://gw.test/",
        **extra,
    )  # fmt: skip


def canceled_job_with_webhook(redis_url: str, url: str) -> str:
    """A queued job asking for a webhook on completion, canceled: its `completed` event is in the outbox."""
    store = JobStore(Redis.from_url(redis_url), QueueSettings(redis_url=redis_url))
    job = store.submit("ebm", {"num_images": 1, "seed": 1, "webhook": url, "webhook_events": ["completed"]})
    assert store.cancel(job) == "canceled"
    return job.id


def run_sender(settings: QueueSettings, done: Callable[[], bool]) -> None:
    """Run a sender until `done()` holds (checked every 20 ms, at most 30 s), then stop it."""

    async def main() -> None:
        sender, stop = Sender(settings, name=f"test-{free_port()}"), anyio.Event()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(sender.run, stop)
            with anyio.fail_after(30):
                while not await anyio.to_thread.run_sync(done):
                    await anyio.sleep(0.02)
            stop.set()
        await sender.close()

    anyio.run(main)


def record(redis_url: str, job_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in Redis.from_url(redis_url).hgetall(keys.webhook_record(job_id)).items()}


def test_a_signed_delivery_is_retried_until_accepted(redis_url: str, receiver: Receiver) -> None:
    job_id = canceled_job_with_webhook(redis_url, receiver.url)
    run_sender(sender_settings(redis_url), lambda: record(redis_url, job_id).get("delivered") == "1")
    first, second = receiver.received
    assert first["status"] == 500 and second["status"] == 200
    assert first["valid"] and second["valid"]  # the receiver's own check of the signature
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"]  # one event: one id, to de-duplicate
    assert second["headers"]["webhook-event"] == "completed"
    body = second["body"]
    assert body["job_id"] == job_id and body["status"] == "canceled"
    assert body["webhook"]["url"] == receiver.url  # the status document, as GET /jobs/{id} shows it
    assert record(redis_url, job_id) | {"completed": "x"} == {
        "attempts": "2", "delivered": "1", "last_status": "200", "last_error": "", "last_event": "completed",
        "completed": "x",
    }  # fmt: skip
    assert Redis.from_url(redis_url).xlen(keys.WEBHOOK_OUTBOX) == 0  # sent events leave the outbox


def test_a_destination_is_checked_when_it_is_resolved(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """hooks.example.test is on the list by name, but now resolves to a private address: refused, not retried."""
    monkeypatch.setattr(gateway.webhooks, "resolve", lambda host, port: [ipaddress.ip_address("10.0.0.7")])
    job_id = canceled_job_with_webhook(redis_url, "https://hooks.example.test/hook")
    run_sender(sender_settings(redis_url), lambda: record(redis_url, job_id).get("failed") == "1")
    seen = record(redis_url, job_id)
    assert seen.get("attempts") is None and "10.0.0.7" in seen["last_error"] and "refused" in seen["last_error"]


def test_a_dead_receiver_is_given_up_after_the_last_attempt(redis_url: str) -> None:
    job_id = canceled_job_with_webhook(redis_url, f"http://127.0.0.1:{free_port()}/nobody-listens")
    run_sender(sender_settings(redis_url), lambda: record(redis_url, job_id).get("failed") == "1")
    seen = record(redis_url, job_id)
    assert seen["attempts"] == "3" and seen["last_status"] == "" and "Connect" in seen["last_error"]
    assert "delivered" not in seen


@pytest.fixture(scope="module")
def client(redis_url: str) -> Iterator[TestClient]:
    settings = GatewaySettings(
        redis_url=redis_url, text_service_url=f"http://127.0.0.1:{free_port()}",
        webhook_allow=["127.0.0.1/32", "hooks.example.test"], webhook_secret=SECRET,
    )  # fmt: skip
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_the_gateway_checks_a_requests_webhook(client: TestClient, redis_url: str) -> None:
    for url, reason in (
        ("http://10.0.0.1/hook", "private"),
        ("http://127.0.0.2:9/hook", "loopback"),
        ("https://elsewhere.example/hook", "resolve"),  # not listed by name, and no address to check
    ):
        refused = client.post("/generate/ebm", json={"webhook": url})
        assert refused.status_code == 422 and reason in refused.json()["detail"], url
    assert client.post("/generate/ebm", json={"webhook": "ftp://x/"}).status_code == 422  # not http(s)
    bad_event = client.post("/generate/ebm", json={"webhook": "https://hooks.example.test/", "webhook_events": ["x"]})
    assert bad_event.status_code == 422
    hook = {"webhook": "https://hooks.example.test/h", "webhook_events": ["start"]}
    accepted = client.post("/generate/ebm", json=hook)
    assert accepted.status_code == 202
    status = client.get(f"/jobs/{accepted.json()['job_id']}").json()
    assert status["webhook"] == {
        "url": "https://hooks.example.test/h", "events": ["start"], "attempts": 0, "delivered": 0, "failed": 0,
        "last_event": None, "last_status": None, "last_error": None,
    }  # fmt: skip
    plain = client.get(f"/jobs/{client.post('/generate/ebm', json={}).json()['job_id']}").json()
    assert plain["webhook"] is None and "webhook" not in plain["parameters"]


def test_webhooks_are_off_unless_configured(redis_url: str) -> None:
    settings = GatewaySettings(redis_url=redis_url, text_service_url=f"http://127.0.0.1:{free_port()}")
    with TestClient(create_app(settings)) as off:
        refused = off.post("/generate/diffusion", json={"steps": 10, "webhook": "https://hooks.example.test/"})
    assert refused.status_code == 422 and "off" in refused.json()["detail"]
