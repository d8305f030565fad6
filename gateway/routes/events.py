"""GET /jobs/{id}/events: the job's status document as server-sent events, pushed whenever it changes.

Workers and the gateway append a notice to the job's Redis stream at every change (shared/service/events.py);
this route blocks on that stream (XREAD, async Redis: no thread held while it waits) and, for each batch
of notices, sends the job's full status document, as `GET /jobs/{id}` describes it, if it changed:

    id: 1733000000000-0        <- the last stream entry the document reflects
    event: status              <- `end` for the last one (finished, failed, canceled), then the stream closes
    data: {"job_id": ..., "status": "started", "progress": {...}, ...}

A client that reconnects with `Last-Event-ID` gets the current document at once if anything happened
after that entry (nothing is missed: the document carries progress, previews and results so far),
else the next change. A quiet stream carries a comment line every `sse_heartbeat_seconds`, when the
job is also re-read (so a change nobody published, such as a dead worker's job being requeued, is sent
too). A job that expires ends its stream with `event: gone`; every stream closes after `sse_max_seconds`.
Access as for the job routes (the key that created the job, else 404); open streams are limited per key
(in Redis, across replicas) and per process: 429 with Retry-After, never a hang.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from anyio import CancelScope, to_thread
from fastapi import APIRouter, Header, HTTPException, Request, Response, status
from fastapi.responses import StreamingResponse
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError
from starlette.types import Receive, Scope, Send

from gateway.access import Caller
from gateway.deps import SettingsDep, StoreDep
from gateway.jobs import JobStore
from gateway.responses import BUSY, JOB_ROUTE, invalid
from gateway.routes.jobs import _owned
from gateway.schemas import JobStatus
from gateway.settings import GatewaySettings
from shared.service import keys

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/jobs", tags=["jobs"])
EVENT_ID = r"^\d{1,20}-\d{1,20}$"  # a Redis stream entry id
TERMINAL = ("finished", "failed", "canceled")
RETRY_MS = 2000  # the reconnection delay the stream asks EventSource clients for
STREAM = {
    200: {
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
        "description": "server-sent events: `status` whenever the job changes, `end` at a terminal state (then the "
        "stream closes), `gone` if the job expired; `data` is the job's status document (as GET /jobs/{job_id})",
    }
}


class EventStream(StreamingResponse):
    """A streaming response that runs `release` however it ends (done, client gone, never started)."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], Awaitable[None]]) -> None:
        super().__init__(
            content, media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},  # no proxy buffering (nginx)
        )  # fmt: skip
        self.release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with CancelScope(shield=True):
                await self.release()


def frame(event: str, data: str, event_id: str | None = None) -> str:
    return (f"id: {event_id}\n" if event_id else "") + f"event: {event}\ndata: {data}\n\n"


def _describe(store: JobStore, job_id: str, base_url: str) -> JobStatus | None:
    found = store.fetch_with_lookups(job_id)
    return None if found is None else store.describe(found[0], base_url, found[1])


def _take_slot(redis: Redis, owner: str, token: str, settings: GatewaySettings) -> bool:
    """Register an open stream of `owner` unless it has `sse_max_streams_per_key` already (lapsed ones,
    of a replica that died, drop out once their score passes)."""
    key, now = keys.event_streams(owner), time.time()
    with redis.pipeline() as pipe:
        pipe.zremrangebyscore(key, "-inf", now)
        pipe.zadd(key, {token: now + _lapse(settings)})
        pipe.zcard(key)
        pipe.expire(key, int(_lapse(settings)) + 60)
        _, _, count, _ = pipe.execute()
    if count > settings.sse_max_streams_per_key:
        redis.zrem(key, token)
        return False
    return True


def _lapse(settings: GatewaySettings) -> float:
    """Seconds a stream's registration lasts without a refresh (it is refreshed at least every heartbeat)."""
    return 3 * settings.sse_heartbeat_seconds + 5


def _id(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


async def follow(
    job_id: str, queue: str | None, last_id: str | None, describe: Callable[[], Awaitable[JobStatus | None]],
    aredis: AsyncRedis, settings: GatewaySettings, refresh: Callable[[], Awaitable[None]],
) -> AsyncIterator[str]:  # fmt: skip
    """The event stream of one job: frames as they happen, heartbeat comments between."""
    stream, heartbeat = keys.job_events(job_id), settings.sse_heartbeat_seconds
    deadline = time.monotonic() + settings.sse_max_seconds
    yield f"retry: {RETRY_MS}\n\n"
    newest = await aredis.xrevrange(stream, count=1)  # read before the job: the document reflects at least this
    resumed = last_id is not None
    missed = resumed and bool(await aredis.xrange(stream, min=f"({last_id}", count=1))
    last_id = _id(newest[0][0]) if newest else (last_id or "0-0")
    doc = await describe()
    if doc is None:
        yield frame("gone", '{"detail": "the job expired"}')
        return
    sent = doc.model_dump_json()
    if not resumed or missed or doc.status in (*TERMINAL, "queued"):  # queued: its position may have moved
        yield frame("end" if doc.status in TERMINAL else "status", sent, last_id)
    queue_id, last_write = "$", time.monotonic()
    while doc.status not in TERMINAL and time.monotonic() < deadline:
        watch = {stream: last_id}
        if doc.status == "queued" and queue is not None:
            watch[keys.queue_events(queue)] = queue_id
        block = max(1, int(min(heartbeat, deadline - time.monotonic()) * 1000))
        reply = await aredis.xread(watch, block=block, count=256)
        for key, entries in reply or []:
            if _id(key) == stream:
                last_id = _id(entries[-1][0])
            else:
                queue_id = _id(entries[-1][0])
        await refresh()
        doc = await describe()
        if doc is None:
            yield frame("gone", '{"detail": "the job expired"}')
            return
        body = doc.model_dump_json()
        if body != sent or doc.status in TERMINAL:
            sent, last_write = body, time.monotonic()
            yield frame("end" if doc.status in TERMINAL else "status", body, last_id)
        elif time.monotonic() - last_write >= heartbeat * 0.9:
            last_write = time.monotonic()
            yield ": heartbeat\n\n"


@router.get(
    "/{job_id}/events", response_class=Response,
    responses={**STREAM, **JOB_ROUTE, **BUSY, **invalid("Last-Event-ID is not an event id this API sent")},
)  # fmt: skip
async def job_events(
    job_id: str,
    request: Request,
    store: StoreDep,
    settings: SettingsDep,
    who: Caller,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", pattern=EVENT_ID, description="resume after this event")
    ] = None,
) -> Response:
    """The job's status document as server-sent events whenever it changes; `end` at a terminal state."""
    state = request.app.state
    job = await to_thread.run_sync(store.fetch, job_id)
    job = _owned(job, job_id, who)
    if state.open_streams >= settings.sse_max_streams_per_process:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS, "this gateway process has too many open event streams; poll instead",
            headers={"Retry-After": "5"},
        )  # fmt: skip
    owner = who or f"addr:{request.client.host if request.client else 'unknown'}"
    token = uuid.uuid4().hex
    if not await to_thread.run_sync(_take_slot, store.redis, owner, token, settings):
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"{settings.sse_max_streams_per_key} event streams are open for this key already",
            headers={"Retry-After": str(int(_lapse(settings)))},
        )  # fmt: skip
    state.open_streams += 1
    aredis: AsyncRedis = state.aredis
    slots, base_url = keys.event_streams(owner), str(request.base_url)

    async def release() -> None:
        state.open_streams -= 1
        try:
            await aredis.zrem(slots, token)
        except RedisError as exc:
            logger.warning("could not release an event stream slot: %s", exc)  # it lapses on its own

    async def refresh() -> None:
        await aredis.zadd(slots, {token: time.time() + _lapse(settings)})

    async def describe() -> JobStatus | None:
        return await to_thread.run_sync(_describe, store, job_id, base_url)

    async def content() -> AsyncIterator[str]:
        try:
            async for chunk in follow(
                job_id, job.origin, last_event_id, describe, aredis, settings, refresh
            ):  # fmt: skip
                yield chunk
        except RedisError as exc:  # the client reconnects (Last-Event-ID) or falls back to polling
            logger.warning("event stream of job %s ends: Redis error %s", job_id, exc)

    return EventStream(content(), release)
