"""The RQ side of a model worker: one process that loads its model once and runs jobs in-process.

Why not RQ's default forking `Worker`: it forks per job, which breaks CUDA initialised in the parent
and would reload the model in every child. `SimpleWorker` runs jobs in the process that loaded the
model, but sends no heartbeats while a job runs; `ModelWorker` makes each job's progress callback
refresh the worker's and the job's heartbeats, so a running 1000-step job is never taken for
abandoned, while a SIGKILLed worker's job is detected within `heartbeat_ttl` seconds and retried.
Cancellation is a Redis flag the progress callback checks every step (RQ's stop-job command does
nothing on a `SimpleWorker`).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import socket
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import torch
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from rq import Queue, SimpleWorker, get_current_job
from rq.executions import Execution
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.timeouts import JobTimeoutException
from rq.utils import now as rq_now
from rq.worker import WorkerStatus

from shared.images import grid_image, png_bytes, to_pil
from shared.service import keys
from shared.service.batching import JobModel, Plan, claim_compatible, combine, request_of, slices
from shared.service.events import publish_job_event
from shared.service.logs import configure_logging, job_context
from shared.service.metrics import publish_worker, record_job
from shared.service.previews import PreviewRecorder
from shared.service.results import store_results
from shared.service.settings import QueueSettings, WorkerSettings
from shared.weights import WeightsError

logger = logging.getLogger(__name__)

_state: dict[str, Any] = {}  # the loaded model, its JobModel and the worker of this process


class JobCanceledError(Exception):
    """Raised from the progress callback when the job's cancel flag is set."""


class ModelWorker(SimpleWorker):
    """A SimpleWorker with short, progress-driven heartbeats, frequent registry maintenance, and batching:
    with `batch_max_images` > 1 it runs compatible queued jobs together with the one it dequeued."""

    heartbeat_ttl = 60
    batch_max_images = 1
    job_model: JobModel | None = None

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return self.heartbeat_ttl

    def execute_job(self, job: Job, queue: Queue) -> None:
        """SimpleWorker.execute_job, plus: take compatible queued jobs and run them all in one run."""
        execution = self.prepare_execution(job)  # BUSY from here: a SIGTERM during the claim is a warm stop
        plan, claimed = self.claim_batch(job, queue)
        if plan is not None and claimed:
            self.execute_batch([(job, plan), *claimed], execution, queue)
        else:
            self.perform_job(job, queue, execution)  # RQ's own path: job.perform() calls run_job()
        self.set_state(WorkerStatus.IDLE)

    def claim_batch(self, job: Job, queue: Queue) -> tuple[Plan | None, list[tuple[Job, Plan]]]:
        """The dequeued job's plan and the queued jobs claimed to share its run (none: it runs alone)."""
        request = request_of(job)
        if self.batch_max_images <= 1 or self.job_model is None or request is None:
            return None, []
        if int(job.meta.get("attempts", 0)) > 0:
            return None, []  # a retried job runs alone: its last run may have died of its batch's size
        try:
            plan = self.job_model.plan(request)
        except Exception:
            return None, []  # run_job fails it with the reason
        return plan, claim_compatible(self.connection, queue, job, plan, self.job_model, self.batch_max_images)

    def execute_batch(self, batch: list[tuple[Job, Plan]], leader_execution: Execution, queue: Queue) -> None:
        """RQ's perform/finalize steps for each job, around one sampling run for all of them."""
        jobs = [job for job, _ in batch]
        executions = [leader_execution, *(self.prepare_execution(job) for job in jobs[1:])]
        for job in jobs:
            self.prepare_job_execution(job, remove_from_intermediate_queue=True)
            self.connection.delete(queue.intermediate_queue.get_first_seen_key(job.id))
            job.started_at = rq_now()
        timeouts = [job.timeout or queue.DEFAULT_TIMEOUT for job in jobs]
        timeout = -1 if -1 in timeouts else max(timeouts)
        try:
            with (
                self.death_penalty_class(timeout, JobTimeoutException, job_id=jobs[0].id),
                job_context(job_id=jobs[0].id, batch=[job.id for job in jobs], model=jobs[0].meta.get("model")),
            ):
                outcomes = run_plans(batch)
        except Exception as exc:
            # A run can fail for its size alone (memory, the timeout of the largest job): each job gets a run
            # of its own, and fails only for its own reason.
            logger.warning("a run of %d jobs failed (%r); running them one by one", len(jobs), exc)
            for item, execution in zip(batch, executions, strict=True):
                self.run_alone(item, execution, queue)
            return
        except BaseException:  # a cold shutdown: every job is failed now, and retried if it has retries left
            exc_info = sys.exc_info()
            for job, execution in zip(jobs, executions, strict=True):
                self._finalize_failure(job, queue, execution, exc_info)
            raise
        for job, execution, outcome in zip(jobs, executions, outcomes, strict=True):
            try:
                self._finalize_success(job, queue, execution, outcome)
            except Exception:  # the others are still finished
                logger.exception("job %s: finished but could not be recorded", job.id)

    def run_alone(self, item: tuple[Job, Plan], execution: Execution, queue: Queue) -> None:
        """One job of a failed batch, in a run of its own, finalized as RQ would."""
        job, _ = item
        try:
            with (
                self.death_penalty_class(job.timeout or queue.DEFAULT_TIMEOUT, JobTimeoutException, job_id=job.id),
                job_context(job_id=job.id, model=job.meta.get("model")),
            ):
                outcome = run_plans([item], new_attempt=False)[0]
        except Exception:
            job.retries_left = 0  # it failed on its own: a retry would meet the same reason
            self._finalize_failure(job, queue, execution, sys.exc_info())
        else:
            self._finalize_success(job, queue, execution, outcome)

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry: Any, execution: Execution) -> None:
        """RQ's bookkeeping, then the job's final event (after the status is stored, so readers see it)."""
        super().handle_job_success(job, queue, started_job_registry, execution)
        publish_job_event(job, "canceled" if job.meta.get("canceled") else "finished")

    def handle_job_failure(
        self, job: Job, queue: Queue, started_job_registry: Any = None, exc_string: str = "",
        execution: Execution | None = None,
    ) -> None:  # fmt: skip
        """RQ's bookkeeping (a retry requeues the job), then the job's event."""
        retried = job.should_retry and self._stopped_job_id != job.id
        super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)
        publish_job_event(job, "requeued" if retried else "failed")

    def beat(self, job: Job) -> None:
        """Refresh this worker's, the job's and the started-registry entry's expiry."""
        for execution in list(self.executions.values()):
            if execution.job_id == job.id:
                self.maintain_heartbeats(job, execution)

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """RQ's heartbeat (also sent while idle), plus this worker's metrics status."""
        super().heartbeat(timeout, pipeline)
        if pipeline is None:
            self.publish()

    def publish(self, current_job: str | None = None, steps_per_second: float | None = None) -> None:
        status = _state.setdefault("status", {"images_generated": 0, "steps_per_second": 0.0})
        if steps_per_second is not None:
            status["steps_per_second"] = round(steps_per_second, 3)
        status.update(
            model=_state.get("model_name", ""),
            device=_state.get("device", ""),
            current_job=current_job,
            max_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux reports KiB
        )
        publish_worker(self.connection, self.name, status, ttl=self.worker_ttl + 60)


class ProgressReporter:
    """The per-step callback of one job: progress into job.meta, heartbeats, the cancel check."""

    def __init__(self, job: Job, worker: ModelWorker | None, interval: float = 0.5) -> None:
        self.job, self.worker, self.interval = job, worker, interval
        self.redis: Redis = job.connection
        self.last, self.last_step = 0.0, 0
        self.previews = PreviewRecorder.for_job(job)  # None unless the request asked for previews

    def __call__(self, step: int, total: int, preview: torch.Tensor | None = None) -> None:
        if self.redis.exists(keys.cancel_flag(self.job.id)):
            raise JobCanceledError(f"job {self.job.id} canceled at step {step}")
        if self.previews is not None and preview is not None:
            stored = self.previews.stored
            self.previews(step, total, preview)  # preview: this job's images only, [-1, 1], (N, C, H, W)
            if self.previews.stored > stored:
                publish_job_event(self.job, "preview", index=stored, step=step)
        now = time.monotonic()
        if now - self.last >= self.interval or step == total:
            speed = (step - self.last_step) / (now - self.last) if self.last and now > self.last else None
            self.last, self.last_step = now, step
            self.job.meta["progress"] = {"step": step, "total": total, "fraction": round(step / total, 4)}
            self.job.save_meta()
            publish_job_event(self.job, "progress", step=step, total=total)
            if self.worker is not None:
                self.worker.beat(self.job)
                self.worker.publish(self.job.id, speed)

    def keep_alive(self) -> None:
        """Heartbeats only: a canceled job whose batch still runs must not be taken for abandoned."""
        now = time.monotonic()
        if self.worker is not None and now - self.last >= self.interval:
            self.last = now
            self.worker.beat(self.job)


class BatchProgress:
    """The sampler's callback for a run shared by several jobs: each job's reporter sees its own images.

    A job canceled before the run starts gets no rows; one canceled during the run stops getting
    progress (its images are still computed, then dropped) but keeps its heartbeat until the run ends.
    When every job of the run is canceled, the run stops.
    """

    def __init__(self, reporters: list[ProgressReporter]) -> None:
        self.reporters = reporters
        self.rows: dict[int, slice] = {}  # job k's images in the run
        self.canceled: set[int] = set()

    def __call__(self, step: int, total: int, preview: torch.Tensor | None = None) -> None:
        for k, reporter in enumerate(self.reporters):
            if k in self.canceled:
                reporter.keep_alive()
                continue
            try:
                reporter(step, total, None if preview is None or k not in self.rows else preview[self.rows[k]])
            except JobCanceledError:
                self.canceled.add(k)
                reporter.job.meta["canceled"] = True  # the API says "canceled" now, not when the run ends
                reporter.job.save_meta()
                publish_job_event(reporter.job, "canceled")
                logger.info("job %s canceled at step %d", reporter.job.id, step)
        if len(self.canceled) == len(self.reporters):
            raise JobCanceledError(f"all {len(self.reporters)} jobs of the run canceled at step {step}")


def set_model(model: Any, job_model: JobModel | None = None) -> None:
    _state["model"] = model
    _state["job_model"] = job_model


def get_model() -> Any:
    if "model" not in _state:
        raise RuntimeError("no model is loaded in this process: jobs run only inside a model worker")
    return _state["model"]


def run_job(request: dict[str, Any]) -> dict:
    """Execute one sampling job inside the worker (RQ's unbatched path): returns the job's JSON result."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("run_job must be called from an RQ job")
    job_model: JobModel | None = _state.get("job_model")
    if job_model is None:
        raise RuntimeError("no model is loaded in this process: jobs run only inside a model worker")
    with job_context(job_id=job.id, model=job.meta.get("model")):
        try:
            try:
                plan = job_model.plan(request)
            except Exception:
                job.meta["attempts"] = int(job.meta.get("attempts", 0)) + 1  # run_plans counts the others
                raise
            return run_plans([(job, plan)])[0]
        except Exception:
            # Bad parameters or a timeout fail the same way every time: retries are for dead workers only.
            job.retries_left = 0
            job.save_meta()
            raise


def run_plans(batch: list[tuple[Job, Plan]], new_attempt: bool = True) -> list[dict]:
    """One sampling run for the jobs of a batch: progress, cancellation, then each job's PNGs into Redis.

    Returns each job's JSON result, in order: `{"num_images", "seconds", "batch_size"}` or `{"canceled": True}`.
    `new_attempt=False`: the jobs' attempt was already counted (a job of a failed batch, run again alone).
    """
    job_model: JobModel = _state["job_model"]
    worker: ModelWorker | None = _state.get("worker")
    jobs, plans = [job for job, _ in batch], [plan for _, plan in batch]
    for job in jobs:
        if new_attempt:
            job.meta["attempts"] = int(job.meta.get("attempts", 0)) + 1
        job.meta["batch_size"] = len(batch)  # jobs in this run (saved with the first progress)
        logger.info("job %s: attempt %d starts (a run of %d jobs)", job.id, job.meta["attempts"], len(batch))
        publish_job_event(job, "started", left_queue=True, attempt=job.meta["attempts"])
    progress = BatchProgress([ProgressReporter(job, worker) for job in jobs])
    started = time.perf_counter()
    images: torch.Tensor | None = None
    try:
        progress(0, plans[0].steps)  # publishes the attempts, and honours cancels that came before the start
        active = [k for k in range(len(batch)) if k not in progress.canceled]
        progress.rows = dict(zip(active, slices([plans[k] for k in active]), strict=True))
        images = job_model.generate(combine([plans[k] for k in active]), progress)
    except JobCanceledError:
        pass  # every job of the run was canceled
    seconds = time.perf_counter() - started
    results = []
    for k, job in enumerate(jobs):
        if images is None or k in progress.canceled:
            job.meta["canceled"] = True
            job.save_meta()
            results.append({"canceled": True})
            continue
        mine = images[progress.rows[k]]
        results.append(_store(job, mine, seconds, len(batch)))
        if worker is not None:
            _state["status"]["images_generated"] = _state["status"].get("images_generated", 0) + len(mine)
    if worker is not None:
        worker.publish(None)
    return results


def _store(job: Job, images: torch.Tensor, seconds: float, batch_size: int) -> dict:
    """A finished job's PNGs and grid into Redis with the job's result TTL, and its timings into the metrics."""
    pngs = [png_bytes(to_pil(image)) for image in images]
    ttl = job.result_ttl if job.result_ttl and job.result_ttl > 0 else QueueSettings().result_ttl
    store_results(job.connection, job.id, pngs, png_bytes(grid_image(images)), ttl)
    wait = (job.started_at - job.enqueued_at).total_seconds() if job.started_at and job.enqueued_at else 0.0
    record_job(job.connection, job.meta.get("model", "unknown"), max(wait, 0.0), seconds, len(pngs))
    logger.info("job %s: %d images in %.1f s (a run of %d jobs)", job.id, len(pngs), seconds, batch_size)
    return {"num_images": len(pngs), "seconds": round(seconds, 3), "batch_size": batch_size}


def worker_name(model: str) -> str:
    return f"{model}-{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


def run_worker(
    model: str,
    loaded: Any,
    job_model: JobModel,
    info: dict[str, Any],
    settings: WorkerSettings,
    name: str,
    burst: bool = False,
) -> None:
    """Publish what was loaded, then pull jobs from the model's queue until stopped (SIGTERM: warm stop)."""
    redis = Redis.from_url(settings.redis_url)
    set_model(loaded, job_model)
    _state.update(model_name=model, device=info.get("device", ""))
    _state["settings"] = settings
    redis.hset(keys.model_info(model), name, json.dumps(info))
    ModelWorker.heartbeat_ttl = settings.heartbeat_ttl
    ModelWorker.batch_max_images = settings.batch_max_images
    ModelWorker.job_model = job_model
    # A short worker TTL makes an idle worker wake up (and look for abandoned jobs) every few seconds.
    worker = ModelWorker(
        [keys.QUEUES[model]], connection=redis, serializer=JSONSerializer, name=name,
        worker_ttl=max(20, settings.heartbeat_ttl),
    )  # fmt: skip
    worker.maintenance_interval = max(5, settings.heartbeat_ttl // 2)  # find abandoned jobs quickly
    _state["worker"] = worker
    worker.publish()
    logger.info("worker %s listening on queue %r", name, keys.QUEUES[model])
    try:
        worker.work(burst=burst, with_scheduler=False, logging_level=settings.log_level)
    finally:
        redis.hdel(keys.model_info(model), name)


def wait_for_redis(url: str, timeout: float = 30.0) -> Redis:
    """A connection once Redis answers (the local runner starts Redis and the workers together)."""
    redis = Redis.from_url(url)
    deadline = time.monotonic() + timeout
    while True:
        try:
            redis.ping()
            return redis
        except RedisConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.25)


def worker_main(
    model: str,
    load: Callable[[WorkerSettings], Any],
    job_model: Callable[[Any], JobModel],
    argv: list[str] | None = None,
) -> int:
    """Entry point of `python -m <model>_worker`: load the weights once, then serve the queue.

    A missing or corrupt weights file stops the worker here, with the reason, before it takes a job.
    `load` returns the pipeline; its `.card` and `.device` are published as the model's info;
    `job_model(pipeline)` says how requests become sampling runs.
    """
    settings = WorkerSettings()
    name = worker_name(model)
    configure_logging(settings.log_level, worker=name)
    burst = bool(argv and "--burst" in argv)
    try:
        pipeline = load(settings)
    except (WeightsError, ValueError) as exc:
        logger.error("%s worker cannot start: %s", model, exc)
        return 2
    try:
        wait_for_redis(settings.redis_url)
    except RedisConnectionError as exc:
        logger.error("%s worker cannot reach Redis at %s: %s", model, settings.redis_url, exc)
        return 3
    card = {k: v for k, v in pipeline.card.items() if k != "training"}
    info = {
        **card,
        "training": pipeline.card.get("training", {}),
        "device": str(pipeline.device),
        # the diffusion UNet's engine and precision, and why (shared/diffusion/runtime.py)
        **({"runtime": pipeline.runtime.describe()} if hasattr(pipeline, "runtime") else {}),
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    run_worker(model, pipeline, job_model(pipeline), info, settings, name, burst=burst)
    return 0
