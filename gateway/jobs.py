"""Jobs as the API sees them: enqueue into RQ, describe, cancel. No torch: workers run the models.

Jobs name their function by import path ("diffusion_worker.jobs.generate_images"), carry only JSON
(RQ's JSON serializer: nothing is unpickled from Redis) and get a uuid4 id.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.client import Pipeline as AsyncPipeline
from redis.client import Pipeline
from rq import Queue, Retry, Worker, worker_registration
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.job import JobStatus as RQStatus
from rq.serializers import JSONSerializer

from gateway.schemas import JobResults, JobState, JobStatus, Preview, Progress, QueueInfo, WebhookDelivery
from shared.service import keys
from shared.service.events import publish_job_event
from shared.service.results import parse_previews
from shared.service.settings import QueueSettings

JOB_FUNCTIONS = {
    "diffusion": "diffusion_worker.jobs.generate_images",
    "ebm": "ebm_worker.jobs.generate_images",
}
_STATES: dict[RQStatus, JobState] = {
    RQStatus.CREATED: "queued",
    RQStatus.QUEUED: "queued",
    RQStatus.DEFERRED: "queued",
    RQStatus.SCHEDULED: "queued",  # a retry waiting for its turn
    RQStatus.STARTED: "started",
    RQStatus.FINISHED: "finished",
    RQStatus.FAILED: "failed",
    RQStatus.STOPPED: "canceled",
    RQStatus.CANCELED: "canceled",
}

REAP_INTERVAL = 1.0  # seconds between reaps of one queue by one gateway process (see JobStore._reap_due)
_last_reap: dict[tuple[int, str], float] = {}
_server_versions: dict[int, tuple[int, int, int]] = {}  # id(sync client) -> Redis version, for RQ (asubmit)


@dataclass(frozen=True)
class Lookups:
    """What `describe` reads besides the job hash, in the same pipeline."""

    canceled: bool
    positions: dict[str, int | None]  # model -> the job's index in that model's queue
    previews: list[tuple[int, int]]
    webhook: dict[str, str]  # the job's webhook record (empty: none yet)

    @classmethod
    def parse(cls, replies: list[Any]) -> Lookups:
        canceled, *positions, previews, webhook = replies
        record = {k.decode(): v.decode() for k, v in webhook.items()}
        return cls(bool(canceled), dict(zip(keys.QUEUES, positions, strict=True)), parse_previews(previews), record)


class JobConflictError(Exception):
    """The job is in a state that does not allow the request (e.g. cancel a finished job)."""


class JobStore:
    """RQ's jobs on `redis`; `aredis` (optional) serves the poll path without a thread (`afetch_with_lookups`)."""

    def __init__(self, redis: Redis, settings: QueueSettings, aredis: AsyncRedis | None = None) -> None:
        self.redis, self.settings, self._aredis = redis, settings, aredis

    @property
    def aredis(self) -> AsyncRedis:
        if self._aredis is None:
            raise RuntimeError("this JobStore was made without an async Redis client")
        return self._aredis

    def queue(self, model: str) -> Queue:
        return Queue(keys.QUEUES[model], connection=self.redis, serializer=JSONSerializer)

    def submit(self, model: str, request: dict[str, Any], owner: str | None = None) -> Job:
        return self.submit_with_position(model, request, owner)[0]

    def submit_with_position(self, model: str, request: dict[str, Any], owner: str | None = None) -> tuple[Job, int]:
        """Enqueue with RQ and read the job's queue position in one transaction (one round trip): RQ's writes
        (the queue set, the job hash, the push) go into our pipeline, and LPOS searches from the tail, where
        the job has just been pushed."""
        with self.redis.pipeline() as pipe:
            job = self._enqueue(model, request, owner, pipe)
            pipe.lpos(self.queue(model).key, job.id, rank=-1)
            return job, int(pipe.execute()[-1])

    async def asubmit_with_position(
        self, model: str, request: dict[str, Any], owner: str | None = None
    ) -> tuple[Job, int]:
        """`submit_with_position` on the async client: the same transaction, no thread. RQ writes the job into
        a pipeline of the sync client, which is never executed itself: its commands go out on the async one."""
        await self._server_version()
        with self.redis.pipeline() as collected:
            job = self._enqueue(model, request, owner, collected)
            async with self.aredis.pipeline(transaction=True) as pipe:
                for args, options in collected.command_stack:
                    pipe.execute_command(*args, **options)
                pipe.lpos(self.queue(model).key, job.id, rank=-1)
                return job, int((await pipe.execute())[-1])

    async def _server_version(self) -> None:
        """RQ reads the Redis version (INFO) once per client before its first enqueue: done here on the async
        client, so RQ's own (blocking) read never runs on the event loop."""
        if not _server_versions.get(id(self.redis)):
            info = await self.aredis.info("server")
            parts = [int(part) for part in str(info["redis_version"]).split(".")[:3]]
            _server_versions[id(self.redis)] = (*parts, 0, 0, 0)[:3]  # type: ignore[assignment]

    def _enqueue(self, model: str, request: dict[str, Any], owner: str | None, pipe: Pipeline) -> Job:
        queue = self.queue(model)
        # known (asubmit read it): RQ does not ask; None: RQ reads it itself on the sync client, once
        queue.redis_server_version = _server_versions.get(id(self.redis))  # type: ignore[assignment]
        return queue.enqueue(
            JOB_FUNCTIONS[model],
            kwargs={"request": request},
            job_id=str(uuid.uuid4()),
            job_timeout=self.settings.job_timeout(model),
            result_ttl=self.settings.result_ttl,
            failure_ttl=self.settings.failure_ttl,
            retry=Retry(max=self.settings.max_retries) if self.settings.max_retries else None,
            meta={"model": model, "attempts": 0, "owner": owner},
            description=f"{model}: {request.get('num_images')} image(s)",
            pipeline=pipe,
        )

    def fetch(self, job_id: str) -> Job | None:
        try:
            uuid.UUID(job_id)
            return Job.fetch(job_id, connection=self.redis, serializer=JSONSerializer)
        except (ValueError, NoSuchJobError):
            return None

    def reap(self, queue: Queue) -> None:
        """Retry (or fail) jobs whose worker died, under RQ's maintenance lock so that no other
        gateway replica or worker handles the same job at the same time (it would be enqueued twice)."""
        if queue.acquire_maintenance_lock():
            try:
                queue.started_job_registry.cleanup()
            finally:
                queue.release_maintenance_lock()

    def _reap_due(self, queue: Queue, claim: bool = True) -> bool:
        """At most one reap per queue, Redis and process every REAP_INTERVAL seconds: a GET of a running
        job would otherwise take RQ's lock and scan the registry each time, while a dead worker's job is
        found only once its heartbeat key expires anyway (at most REAP_INTERVAL later here). `claim=False`
        only asks."""
        slot, now = (id(self.redis), queue.key), time.monotonic()
        if now - _last_reap.get(slot, -REAP_INTERVAL) < REAP_INTERVAL:
            return False
        if claim:
            _last_reap[slot] = now
        return True

    def canceled(self, job: Job) -> bool:
        return bool(self.redis.exists(keys.cancel_flag(job.id)))

    def state(self, job: Job) -> JobState:
        """The job's state; `job` as just fetched (its status is not read again unless a reap ran)."""
        status = self._status(job)
        return self._resolve(job, status, self.canceled(job))

    def _status(self, job: Job) -> RQStatus | None:
        status = job.get_status(refresh=False)
        model = job.meta.get("model")
        if status == RQStatus.STARTED and model in keys.QUEUES:
            queue = self.queue(model)
            if self._reap_due(queue):
                self.reap(queue)  # a dead worker's job is found here at the latest
                job.refresh()  # a reaped job is requeued (or failed) with new fields
                status = job.get_status(refresh=False)
        return status

    def _resolve(self, job: Job, status: RQStatus | None, canceled: bool) -> JobState:
        if canceled:
            if status in (RQStatus.QUEUED, RQStatus.SCHEDULED, RQStatus.DEFERRED):
                self._cancel_queued(job)  # requeued after its worker died: it must not run
                job.refresh()
                return "canceled"
            if status == RQStatus.FAILED:
                return "canceled"  # its worker died after the cancel request
        if status in (RQStatus.FINISHED, RQStatus.STARTED) and job.meta.get("canceled"):
            return "canceled"  # STARTED: canceled inside a batch that is still running for its other jobs
        return _STATES.get(status, "queued") if status is not None else "failed"

    def _cancel_queued(self, job: Job) -> None:
        if job.is_canceled:
            return
        job.cancel()
        with self.redis.pipeline() as pipe:  # RQ keeps canceled jobs forever; ours expire like results
            pipe.expire(job.key, self.settings.result_ttl)
            pipe.zrem(self.queue(job.meta.get("model", "diffusion")).canceled_job_registry.key, job.id)
            pipe.execute()

    def _ask_lookups(self, pipe: Pipeline | AsyncPipeline, job_id: str) -> None:
        pipe.exists(keys.cancel_flag(job_id))
        for model in keys.QUEUES:  # LPOS in every queue: they are short (GENSERVICE_MAX_QUEUE_DEPTH)
            pipe.lpos(self.queue(model).key, job_id)
        pipe.hgetall(keys.preview_steps(job_id))
        pipe.hgetall(keys.webhook_record(job_id))

    def lookups(self, job_id: str) -> Lookups:
        with self.redis.pipeline(transaction=False) as pipe:
            self._ask_lookups(pipe, job_id)
            return Lookups.parse(pipe.execute())

    def fetch_with_lookups(self, job_id: str) -> tuple[Job, Lookups] | None:
        """The job and what `describe` reads besides it, in one round trip; None for no such job."""
        try:
            uuid.UUID(job_id)
        except ValueError:
            return None
        job = Job(job_id, connection=self.redis, serializer=JSONSerializer)  # as RQ's Job.fetch_many builds them
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(job.key)
            self._ask_lookups(pipe, job_id)
            raw, *replies = pipe.execute()
        return self._restored(job, raw, replies)

    async def afetch_with_lookups(self, job_id: str) -> tuple[Job, Lookups] | None:
        """`fetch_with_lookups` on the async client: the same one round trip, no thread. The job stays bound to
        the sync client, for `describe` (which reads nothing more unless `describe_reads_redis` says so)."""
        try:
            uuid.UUID(job_id)
        except ValueError:
            return None
        job = Job(job_id, connection=self.redis, serializer=JSONSerializer)
        async with self.aredis.pipeline(transaction=False) as pipe:
            pipe.hgetall(job.key)
            self._ask_lookups(pipe, job_id)
            raw, *replies = await pipe.execute()
        return self._restored(job, raw, replies)

    @staticmethod
    def _restored(job: Job, raw: dict[bytes, bytes], replies: list[Any]) -> tuple[Job, Lookups] | None:
        if not raw:
            return None
        job.restore(raw)
        return job, Lookups.parse(replies)

    def describe_reads_redis(self, job: Job, lookups: Lookups) -> bool:
        """Whether `describe(job, ..., lookups)` reads or writes Redis: for a failed job (its error), a job with a
        cancel flag (a requeued one is canceled there), a started job when a reap is due. The usual poll of a
        queued, running or finished job reads nothing more, so the poll route describes it on the event loop."""
        status = job.get_status(refresh=False)
        if status == RQStatus.FAILED or lookups.canceled:
            return True
        model = job.meta.get("model")
        return status == RQStatus.STARTED and model in keys.QUEUES and self._reap_due(self.queue(model), claim=False)

    def describe(self, job: Job, base_url: str, lookups: Lookups | None = None) -> JobStatus:
        """`job` as just fetched; `lookups` read with it (`fetch_with_lookups`), or here."""
        fetched = job.get_status(refresh=False)
        status = self._status(job)
        if lookups is None or status != fetched:  # a reap requeued (or failed) it meanwhile
            lookups = self.lookups(job.id)
        model = job.meta.get("model", "unknown")
        request = job.kwargs.get("request", {})
        canceled, position = lookups.canceled, lookups.positions.get(model)
        state = self._resolve(job, status, canceled)
        progress = job.meta.get("progress")
        results = None
        if state == "finished":
            n = int(request.get("num_images", 0))
            results = JobResults(
                images=[f"{base_url}jobs/{job.id}/images/{k}.png" for k in range(n)],
                grid=f"{base_url}jobs/{job.id}/grid.png",
            )
        previews = [
            Preview(index=k, step=step, url=f"{base_url}jobs/{job.id}/previews/{k}.png")
            for k, step in (lookups.previews if request.get("previews") else [])
        ]
        return JobStatus(
            job_id=job.id,
            model=model,
            status=state,
            progress=Progress(**progress) if progress else None,
            queue_position=position if state == "queued" else None,
            attempts=int(job.meta.get("attempts", 0)),
            worker=job.worker_name,
            enqueued_at=job.enqueued_at,
            started_at=job.started_at,
            ended_at=job.ended_at,
            parameters=request,
            error=failure_reason(job) if state == "failed" else None,
            results=results,
            previews=previews,
            webhook=webhook_delivery(request, lookups.webhook),
        )

    def cancel(self, job: Job) -> str:
        """'canceled' for a queued job (it never runs), 'canceling' for a running one (stops at its next step)."""
        state = self.state(job)
        if state in ("finished", "failed", "canceled"):
            raise JobConflictError(f"job {job.id} is already {state}")
        # The flag stops a running job at its next step, and a job a worker dequeues in the same instant;
        # it outlives any retry of the job.
        ttl = max(self.settings.failure_ttl, self.settings.result_ttl)
        self.redis.set(keys.cancel_flag(job.id), 1, ex=ttl)
        if state == "queued":
            self._cancel_queued(job)
            publish_job_event(job, "canceled", left_queue=True)  # the job's stream, and the queue's: positions moved
            return "canceled"
        return "canceling"

    def queue_info(self, model: str) -> QueueInfo:
        queue = self.queue(model)
        return QueueInfo(
            queued=queue.count,
            started=int(self.redis.zcard(queue.started_job_registry.key)),
            workers=self.live_workers(queue),
        )

    def live_workers(self, queue: Queue) -> int:
        """Registered workers whose key has not expired (RQ drops dead ones from its index only later)."""
        names = worker_registration.get_keys(queue=queue, connection=self.redis)
        if not names:
            return 0
        with self.redis.pipeline() as pipe:
            for name in names:
                pipe.exists(name)
            return sum(pipe.execute())

    def models_info(self) -> dict[str, list[dict[str, Any]]]:
        """What each live worker published when it loaded its model (stale entries of dead workers dropped)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for model in keys.QUEUES:
            live = {w.name for w in Worker.all(queue=self.queue(model))}
            published = self.redis.hgetall(keys.model_info(model))
            out[model] = [
                {"worker": name.decode(), **json.loads(info)}
                for name, info in published.items()
                if name.decode() in live
            ]
        return out


def webhook_delivery(request: dict[str, Any], record: dict[str, str]) -> WebhookDelivery | None:
    """The job's webhook status from its request and its delivery record (gateway/webhooks.py writes it)."""
    if not request.get("webhook"):
        return None
    status = record.get("last_status")
    return WebhookDelivery(
        url=request["webhook"], events=list(request.get("webhook_events") or []),
        attempts=int(record.get("attempts", 0)), delivered=int(record.get("delivered", 0)),
        failed=int(record.get("failed", 0)), last_event=record.get("last_event"),
        last_status=int(status) if status else None, last_error=record.get("last_error") or None,
    )  # fmt: skip


def failure_reason(job: Job) -> str:
    """The last line of the failure's traceback ("ValueError: ..."), or RQ's own reason."""
    result = job.latest_result()
    text = (result.exc_string if result is not None else None) or ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "the job failed without an error message"
