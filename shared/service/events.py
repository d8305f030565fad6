"""Job events: whoever changes a job (the worker, the gateway's cancel) appends to the job's Redis stream.

One stream per job (`keys.job_events`), capped in length and expiring with the job, so a gateway
replica serving `GET /jobs/{id}/events` reads what any worker on any host published, and a client that
reconnects with `Last-Event-ID` (a stream entry id) resumes after the last entry it saw. A second,
per-queue stream (`keys.queue_events`) says that a job left the queue, so streams of queued jobs
re-read their queue position. Entries are small notices (`kind` and a few fields); the gateway sends
the job's full status document, read when it sees them. No torch and no gateway code here.

A job whose request asked for a webhook on this kind of event (`webhook_events`: start, progress,
completed) also gets an entry in the webhook outbox, which `python -m gateway.webhooks` sends from its
own process: the worker only appends to a stream, so a slow receiver never delays sampling.

Publishing never fails the caller: a Redis error is logged and the job goes on (a client then learns
of the change at its stream's next heartbeat, when the gateway re-reads the job anyway).
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache

from redis import Redis
from redis.exceptions import RedisError
from rq.job import Job

from shared.service import keys
from shared.service.settings import QueueSettings
from shared.service.webhooks import EVENT_OF_KIND

logger = logging.getLogger(__name__)

STREAM_MAXLEN = 512  # entries kept per job (approximate trim): far more than a reconnecting client needs
QUEUE_STREAM_MAXLEN = 1024
KINDS = ("queued", "started", "progress", "preview", "requeued", "finished", "failed", "canceled")
TERMINAL = ("finished", "failed", "canceled")
DEFAULT_TTL = 7 * 24 * 3600
OUTBOX_MAXLEN = 100_000  # webhook events waiting to be sent, at most (a backstop: the dispatchers delete sent ones)
_progress_hooks: dict[str, float] = {}  # job id -> when this process last queued a progress webhook for it


def job_ttl(job: Job) -> int:
    """Seconds the job's own records live at most (its result or failure TTL, whichever is longer)."""
    ttls = [t for t in (job.result_ttl, job.failure_ttl) if t is not None and t > 0]
    return max(ttls) if ttls else DEFAULT_TTL


def publish(
    redis: Redis, job_id: str, kind: str, ttl: int, queue: str | None = None, webhook: str | None = None,
    **fields: str | int | float,
) -> str | None:  # fmt: skip
    """Append one event to the job's stream (and a notice to `queue`'s stream, and `webhook`, an event name,
    to the webhook outbox); the entry id, or None on error."""
    entry = {"kind": kind, **{k: str(v) for k, v in fields.items()}}
    try:
        with redis.pipeline(transaction=False) as pipe:
            pipe.xadd(keys.job_events(job_id), entry, maxlen=STREAM_MAXLEN, approximate=True)
            pipe.expire(keys.job_events(job_id), ttl)
            if queue is not None:
                pipe.xadd(keys.queue_events(queue), {"job": job_id, "kind": kind}, maxlen=QUEUE_STREAM_MAXLEN)
                pipe.expire(keys.queue_events(queue), ttl)
            if webhook is not None:
                outbox = {"job": job_id, "event": webhook, "kind": kind}
                pipe.xadd(keys.WEBHOOK_OUTBOX, outbox, maxlen=OUTBOX_MAXLEN, approximate=True)
            entry_id = pipe.execute()[0]
    except RedisError as exc:
        logger.warning("job %s: could not publish its %s event: %s", job_id, kind, exc)
        return None
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id


def publish_job_event(job: Job, kind: str, left_queue: bool = False, **fields: str | int | float) -> str | None:
    """`publish` for an RQ job (its connection and TTL); `left_queue`: the job left its queue just now."""
    return publish(
        job.connection, job.id, kind, job_ttl(job), queue=job.origin if left_queue else None,
        webhook=webhook_event(job, kind, fields), **fields,
    )  # fmt: skip


@lru_cache
def _progress_interval() -> float:
    return QueueSettings().webhook_progress_interval


def webhook_event(job: Job, kind: str, fields: dict[str, str | int | float]) -> str | None:
    """The webhook event this job event triggers, if the job's request asked for it; progress at most every
    `GENSERVICE_WEBHOOK_PROGRESS_INTERVAL` seconds per job (and its last step always)."""
    request = (job.kwargs or {}).get("request") or {}
    event = EVENT_OF_KIND.get(kind)
    if not request.get("webhook") or event not in (request.get("webhook_events") or ()):
        return None
    if event == "progress":
        now, last = time.monotonic(), _progress_hooks.get(job.id)
        final = fields.get("step") is not None and fields.get("step") == fields.get("total")
        if last is not None and now - last < _progress_interval() and not final:
            return None
        _progress_hooks[job.id] = now
    elif event == "completed":
        _progress_hooks.pop(job.id, None)
    return event
