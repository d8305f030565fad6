"""Job events: whoever changes a job (the worker, the gateway's cancel) appends to the job's Redis stream.

One stream per job (`keys.job_events`), capped in length and expiring with the job, so a gateway
replica serving `GET /jobs/{id}/events` reads what any worker on any host published, and a client that
reconnects with `Last-Event-ID` (a stream entry id) resumes after the last entry it saw. A second,
per-queue stream (`keys.queue_events`) says that a job left the queue, so streams of queued jobs
re-read their queue position. Entries are small notices (`kind` and a few fields); the gateway sends
the job's full status document, read when it sees them. No torch and no gateway code here.

Publishing never fails the caller: a Redis error is logged and the job goes on (a client then learns
of the change at its stream's next heartbeat, when the gateway re-reads the job anyway).
"""

from __future__ import annotations

import logging

from redis import Redis
from redis.exceptions import RedisError
from rq.job import Job

from shared.service import keys

logger = logging.getLogger(__name__)

STREAM_MAXLEN = 512  # entries kept per job (approximate trim): far more than a reconnecting client needs
QUEUE_STREAM_MAXLEN = 1024
KINDS = ("queued", "started", "progress", "preview", "requeued", "finished", "failed", "canceled")
TERMINAL = ("finished", "failed", "canceled")
DEFAULT_TTL = 7 * 24 * 3600


def job_ttl(job: Job) -> int:
    """Seconds the job's own records live at most (its result or failure TTL, whichever is longer)."""
    ttls = [t for t in (job.result_ttl, job.failure_ttl) if t is not None and t > 0]
    return max(ttls) if ttls else DEFAULT_TTL


def publish(
    redis: Redis, job_id: str, kind: str, ttl: int, queue: str | None = None, **fields: str | int | float
) -> str | None:
    """Append one event to the job's stream (and a notice to `queue`'s stream); the entry id, or None on error."""
    entry = {"kind": kind, **{k: str(v) for k, v in fields.items()}}
    try:
        with redis.pipeline(transaction=False) as pipe:
            pipe.xadd(keys.job_events(job_id), entry, maxlen=STREAM_MAXLEN, approximate=True)
            pipe.expire(keys.job_events(job_id), ttl)
            if queue is not None:
                pipe.xadd(keys.queue_events(queue), {"job": job_id, "kind": kind}, maxlen=QUEUE_STREAM_MAXLEN)
                pipe.expire(keys.queue_events(queue), ttl)
            entry_id = pipe.execute()[0]
    except RedisError as exc:
        logger.warning("job %s: could not publish its %s event: %s", job_id, kind, exc)
        return None
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id


def publish_job_event(job: Job, kind: str, left_queue: bool = False, **fields: str | int | float) -> str | None:
    """`publish` for an RQ job (its connection and TTL); `left_queue`: the job left its queue just now."""
    return publish(job.connection, job.id, kind, job_ttl(job), queue=job.origin if left_queue else None, **fields)
