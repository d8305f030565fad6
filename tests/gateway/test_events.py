"""GET /jobs/{id}/events in-process against a real Redis: framing, resume after Last-Event-ID, access, limits.

The stream of a job that changes while it is open is driven here through `follow` itself (the route's loop),
with events published as a worker does; tests/integration/test_events.py watches real jobs over real HTTP.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from gateway.access import key_id
from gateway.app import create_app
from gateway.routes.events import follow
from gateway.schemas import JobStatus
from gateway.settings import GatewaySettings
from shared.service import keys
from shared.service.events import publish
from tests.integration.stack import free_port

KEYS = ["key-a", "key-b"]


def settings_for(redis_url: str, **extra: Any) -> GatewaySettings:
    return GatewaySettings(redis_url=redis_url, text_service_url=f"http://127.0.0.1:{free_port()}", **extra)


@pytest.fixture(scope="module")
def client(redis_url: str) -> Iterator[TestClient]:
    app = create_app(settings_for(redis_url, api_keys=KEYS, sse_max_streams_per_key=2, sse_heartbeat_seconds=1))
    with TestClient(app) as test_client:
        yield test_client


def parse(text: str) -> list[dict[str, str]]:
    """SSE frames as dicts (field -> value); comments and the retry line left out."""
    frames = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "event" in fields:
            frames.append(fields)
    return frames


def canceled_job(client: TestClient, key: str = "key-a") -> str:
    job_id = client.post("/generate/ebm", json={}, headers={"X-API-Key": key}).json()["job_id"]
    assert client.delete(f"/jobs/{job_id}", headers={"X-API-Key": key}).json()["status"] == "canceled"
    return job_id


def test_a_finished_stream_sends_its_end_event_and_closes(client: TestClient, redis_url: str) -> None:
    job_id = canceled_job(client)
    response = client.get(f"/jobs/{job_id}/events", headers={"X-API-Key": "key-a"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    assert response.text.startswith("retry: ")
    (end,) = parse(response.text)
    assert end["event"] == "end" and json.loads(end["data"])["status"] == "canceled"
    # its id is the entry the gateway's cancel appended to the job's stream
    newest = Redis.from_url(redis_url).xrevrange(keys.job_events(job_id), count=1)
    assert end["id"] == newest[0][0].decode()
    again = client.get(f"/jobs/{job_id}/events", headers={"X-API-Key": "key-a", "Last-Event-ID": end["id"]})
    assert [f["event"] for f in parse(again.text)] == ["end"]  # a reconnect after the end gets it again, and closes
    assert client.app.state.open_streams == 0  # type: ignore[attr-defined]  # closed streams free their place


def test_only_the_owner_may_stream(client: TestClient) -> None:
    job_id = canceled_job(client)
    assert client.get(f"/jobs/{job_id}/events", headers={"X-API-Key": "key-b"}).status_code == 404
    assert client.get(f"/jobs/{job_id}/events").status_code == 401
    nobody = "00000000-0000-4000-8000-000000000000"
    assert client.get(f"/jobs/{nobody}/events", headers={"X-API-Key": "key-a"}).status_code == 404
    bad = client.get(f"/jobs/{job_id}/events", headers={"X-API-Key": "key-a", "Last-Event-ID": "yesterday"})
    assert bad.status_code == 422


def test_open_streams_are_limited_per_key_and_per_process(client: TestClient, redis_url: str) -> None:
    job_id = canceled_job(client, "key-b")
    redis, slots = Redis.from_url(redis_url), keys.event_streams(key_id("key-b"))
    redis.zadd(slots, {"other-replica-1": time.time() + 60, "other-replica-2": time.time() + 60})  # 2 = the limit
    busy = client.get(f"/jobs/{job_id}/events", headers={"X-API-Key": "key-b"})
    assert busy.status_code == 429 and int(busy.headers["retry-after"]) > 0 and "2 event streams" in busy.text
    redis.zadd(slots, {"other-replica-1": time.time() - 1})  # lapsed: its replica died without closing it
    assert client.get(f"/jobs/{job_id}/events", headers={"X-API-Key": "key-b"}).status_code == 200
    assert redis.zrange(slots, 0, -1) == [b"other-replica-2"]  # a closed stream gives its slot back
    app = client.app
    app.state.open_streams = app.state.settings.sse_max_streams_per_process  # type: ignore[attr-defined]
    try:
        assert client.get(f"/jobs/{job_id}/events", headers={"X-API-Key": "key-b"}).status_code == 429
    finally:
        app.state.open_streams = 0  # type: ignore[attr-defined]


def status_doc(job_id: str, state: str, step: int | None = None) -> JobStatus:
    progress = None if step is None else {"step": step, "total": 10, "fraction": step / 10}
    return JobStatus(job_id=job_id, model="ebm", status=state, progress=progress, parameters={})  # type: ignore[arg-type]


def test_follow_sends_each_change_and_resumes_after_the_last_event_id(redis_url: str) -> None:
    """A job's life as the worker publishes it; a client that drops out and reconnects misses nothing."""
    redis, job_id = Redis.from_url(redis_url), "11111111-1111-4111-8111-111111111111"
    settings = settings_for(redis_url, sse_heartbeat_seconds=0.2)
    current = {"doc": status_doc(job_id, "queued")}

    def change(doc: JobStatus, kind: str) -> None:
        current["doc"] = doc
        publish(redis, job_id, kind, ttl=60, queue="ebm")

    async def describe() -> JobStatus:
        return current["doc"]

    async def nothing() -> None:
        return None

    async def read(last_id: str | None, upto: int, between: list[tuple[JobStatus, str]]) -> list[dict[str, str]]:
        """Frames of one connection until `upto` events came; a change from `between` after each event."""
        aredis = AsyncRedis.from_url(redis_url)
        frames: list[dict[str, str]] = []
        try:
            with anyio.fail_after(20):
                async for chunk in follow(job_id, "ebm", last_id, describe, aredis, settings, nothing):
                    frames += parse(chunk)
                    if chunk.startswith("event:") or chunk.startswith("id:"):
                        if len(frames) >= upto:
                            break
                        if between:
                            await anyio.to_thread.run_sync(change, *between.pop(0))
        finally:
            await aredis.aclose()
        return frames

    first = anyio.run(read, None, 3, [(status_doc(job_id, "started", 0), "started"),
                                      (status_doc(job_id, "started", 4), "progress")])  # fmt: skip
    assert [(f["event"], json.loads(f["data"])["status"]) for f in first] == [
        ("status", "queued"), ("status", "started"), ("status", "started")]  # fmt: skip
    assert json.loads(first[-1]["data"])["progress"]["step"] == 4
    ids = [f["id"] for f in first]
    as_numbers = [tuple(int(part) for part in i.split("-")) for i in ids]
    assert as_numbers == sorted(set(as_numbers))  # ids are the stream's entry ids, moving forward

    # while nobody listens: more progress, then the end
    change(status_doc(job_id, "started", 8), "progress")
    change(status_doc(job_id, "finished", 10), "finished")
    resumed = anyio.run(read, ids[-1], 1, [])
    assert [(f["event"], json.loads(f["data"])["status"]) for f in resumed] == [("end", "finished")]
    assert resumed[0]["id"] == redis.xrevrange(keys.job_events(job_id), count=1)[0][0].decode()


def test_a_resumed_stream_of_an_unchanged_job_waits_for_the_next_change(redis_url: str) -> None:
    redis, job_id = Redis.from_url(redis_url), "22222222-2222-4222-8222-222222222222"
    settings = settings_for(redis_url, sse_heartbeat_seconds=0.2)
    last = publish(redis, job_id, "progress", ttl=60, step=3, total=10)
    docs = [status_doc(job_id, "started", 3)]

    async def describe() -> JobStatus:
        return docs[-1]

    async def nothing() -> None:
        return None

    async def run() -> list[str]:
        aredis = AsyncRedis.from_url(redis_url)
        chunks: list[str] = []
        try:
            with anyio.fail_after(20):
                async for chunk in follow(job_id, "ebm", last, describe, aredis, settings, nothing):
                    chunks.append(chunk)
                    if chunk.startswith(": heartbeat"):
                        docs.append(status_doc(job_id, "finished", 10))
                        await anyio.to_thread.run_sync(lambda: publish(redis, job_id, "finished", ttl=60))
        finally:
            await aredis.aclose()
        return chunks

    chunks = anyio.run(run)
    events = [f for chunk in chunks for f in parse(chunk)]
    assert chunks[1].startswith(": heartbeat")  # nothing after Last-Event-ID: no event, only the heartbeat
    assert [f["event"] for f in events] == ["end"]  # then the change, and the stream ends by itself
