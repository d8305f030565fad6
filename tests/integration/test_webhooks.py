"""Webhooks over the live stack: workers publish, `python -m gateway.webhooks` signs and sends to receivers on
loopback (the allow-list names 127.0.0.1/32, as an operator would list a network), with a dead receiver beside."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.receiver import SECRET, Receiver
from tests.integration.stack import Stack, wait_until

TIMEOUT = 3.0  # GENSERVICE_WEBHOOK_TIMEOUT of the sender here


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    live = Stack(tmp_path_factory.mktemp("webhooks"))
    live.env.update({
        "GENSERVICE_WEBHOOK_ALLOW": "127.0.0.1/32", "GENSERVICE_WEBHOOK_SECRET": SECRET,
        "GENSERVICE_WEBHOOK_MAX_ATTEMPTS": "3", "GENSERVICE_WEBHOOK_BACKOFF_SECONDS": "0.2",
        "GENSERVICE_WEBHOOK_TIMEOUT": str(TIMEOUT), "GENSERVICE_WEBHOOK_PROGRESS_INTERVAL": "0.5",
        "GENSERVICE_PUBLIC_URL": live.url + "/",
    })  # fmt: skip
    try:  # a start that fails half-way still stops what it started
        live.start()
        live.spawn("webhooks", "-m", "gateway.webhooks")
        yield live
    finally:
        live.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    live = Receiver()
    yield live
    live.close()


def test_a_signed_webhook_on_start_progress_and_completion(stack: Stack, receiver: Receiver) -> None:
    events = ["start", "progress", "completed"]
    job = stack.submit("diffusion", num_images=1, steps=400, webhook=receiver.url, webhook_events=events)
    got = receiver.wait_for(lambda seen: any(r["headers"]["webhook-event"] == "completed" for r in seen))
    assert all(r["valid"] for r in got)  # every POST verified by the receiver's own HMAC check
    kinds = [r["headers"]["webhook-event"] for r in got]
    assert kinds[0] == "start" and kinds[-1] == "completed" and "progress" in kinds
    assert len({r["headers"]["webhook-id"] for r in got}) == len(got)  # one id per event
    final = got[-1]["body"]
    assert final["job_id"] == job["job_id"] and final["status"] == "finished"
    assert final["results"]["grid"] == f"{stack.url}/jobs/{job['job_id']}/grid.png"  # GENSERVICE_PUBLIC_URL
    status = wait_until(lambda: (s := stack.status(job["job_id"]))["webhook"]["delivered"] == len(got) and s, 30,
                        "the deliveries in the job status")  # fmt: skip
    assert status["webhook"]["attempts"] == len(got) and status["webhook"]["last_status"] == 200


def test_a_refused_destination_is_a_422(stack: Stack) -> None:
    for url in ("http://127.0.0.2:9/hook", "http://10.1.2.3/hook", "http://169.254.169.254/latest/meta-data"):
        refused = stack.client.post("/generate/ebm", json={"webhook": url})
        assert refused.status_code == 422 and "not allowed" in refused.json()["detail"], url


def test_a_dead_receiver_delays_neither_sampling_nor_another_jobs_webhook(
    stack: Stack, receiver: Receiver, tmp_path: Path
) -> None:
    with socket.socket() as dead:  # accepts connections (the kernel's backlog) and never answers
        dead.bind(("127.0.0.1", 0))
        dead.listen(8)
        dead_url = f"http://127.0.0.1:{dead.getsockname()[1]}/hook"
        stuck = stack.submit("ebm", num_images=1, steps=5, webhook=dead_url, webhook_events=["completed"])
        assert stack.wait_for(stuck["job_id"], timeout=60)["status"] == "finished"  # sampling went on
        other = stack.submit("ebm", num_images=1, steps=5, webhook=receiver.url, webhook_events=["completed"])
        receiver.wait_for(lambda seen: any(r["body"]["job_id"] == other["job_id"] for r in seen), timeout=30)
        during = stack.status(stuck["job_id"])["webhook"]
        assert during["failed"] == 0  # the other job's webhook arrived while this one still waited for an answer
        final = wait_until(lambda: (w := stack.status(stuck["job_id"])["webhook"])["failed"] == 1 and w,
                           3 * TIMEOUT + 30, "the dead receiver's event to be given up")  # fmt: skip
    assert final["attempts"] == 3 and final["delivered"] == 0 and final["last_status"] is None
    assert "Timeout" in final["last_error"]
