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

from shared.images import grid_image, png_bytes, to_pil
from shared.service import keys
from shared.service.logs import configure_logging, job_context
from shared.service.metrics import publish_worker, record_job
from shared.service.previews import PreviewRecorder
from shared.service.results import store_results
from shared.service.settings import QueueSettings, WorkerSettings
from shared.weights import WeightsError

logger = logging.getLogger(__name__)

_state: dict[str, Any] = {}  # the loaded model and the worker of this process


class JobCanceledError(Exception):
    """Raised from the progress callback when the job's cancel flag is set."""


class ModelWorker(SimpleWorker):
    """A SimpleWorker with short, progress-driven heartbeats and frequent registry maintenance."""

    heartbeat_ttl = 60

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return self.heartbeat_ttl

    def execute_job(self, job: Job, queue: Queue) -> None:
        _state["execution"] = None
        super().execute_job(job, queue)

    def prepare_execution(self, job: Job) -> Execution:
        execution = super().prepare_execution(job)
        _state["execution"] = execution
        return execution

    def beat(self, job: Job) -> None:
        """Refresh this worker's, the job's and the started-registry entry's expiry."""
        execution = _state.get("execution")
        if execution is not None:
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
            self.previews(step, total, preview)  # preview: this job's images only, [-1, 1], (N, C, H, W)
        now = time.monotonic()
        if now - self.last >= self.interval or step == total:
            speed = (step - self.last_step) / (now - self.last) if self.last and now > self.last else None
            self.last, self.last_step = now, step
            self.job.meta["progress"] = {"step": step, "total": total, "fraction": round(step / total, 4)}
            self.job.save_meta()
            if self.worker is not None:
                self.worker.beat(self.job)
                self.worker.publish(self.job.id, speed)


def set_model(model: Any) -> None:
    _state["model"] = model


def get_model() -> Any:
    if "model" not in _state:
        raise RuntimeError("no model is loaded in this process: jobs run only inside a model worker")
    return _state["model"]


# prepare() -> (total steps, run); run(callback) -> uint8 images (N, C, H, W)
Prepare = Callable[[], tuple[int, Callable[[ProgressReporter], torch.Tensor]]]


def run_job(prepare: Prepare) -> dict:
    """Execute one sampling job inside the worker: progress, cancellation, PNGs into Redis.

    `prepare()` turns the request into parameters (and may raise ValueError); returns the job's JSON result.
    """
    job = get_current_job()
    if job is None:
        raise RuntimeError("run_job must be called from an RQ job")
    with job_context(job_id=job.id, model=job.meta.get("model")):
        return _run_job(job, prepare)


def _run_job(job: Job, prepare: Prepare) -> dict:
    job.meta["attempts"] = int(job.meta.get("attempts", 0)) + 1
    worker: ModelWorker | None = _state.get("worker")
    reporter = ProgressReporter(job, worker)
    started = time.perf_counter()
    logger.info("job %s: attempt %d starts", job.id, job.meta["attempts"])
    try:
        total_steps, run = prepare()
        reporter(0, total_steps)  # publishes the attempt, and honours a cancel that came before the start
        images = run(reporter)
    except JobCanceledError:
        logger.info("job %s canceled", job.id)
        job.meta["canceled"] = True
        job.save_meta()
        return {"canceled": True}
    except Exception:
        # Bad parameters or a timeout fail the same way every time: retries are for dead workers only.
        job.retries_left = 0
        job.save_meta()
        raise
    seconds = time.perf_counter() - started
    pngs = [png_bytes(to_pil(image)) for image in images]
    ttl = job.result_ttl if job.result_ttl and job.result_ttl > 0 else QueueSettings().result_ttl
    store_results(job.connection, job.id, pngs, png_bytes(grid_image(images)), ttl)
    wait = (job.started_at - job.enqueued_at).total_seconds() if job.started_at and job.enqueued_at else 0.0
    record_job(job.connection, job.meta.get("model", "unknown"), max(wait, 0.0), seconds, len(pngs))
    if worker is not None:
        _state["status"]["images_generated"] = _state["status"].get("images_generated", 0) + len(pngs)
        worker.publish(None)
    logger.info("job %s: %d images in %.1f s", job.id, len(pngs), seconds)
    return {"num_images": len(pngs), "seconds": round(seconds, 3)}


def worker_name(model: str) -> str:
    return f"{model}-{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


def run_worker(
    model: str, loaded: Any, info: dict[str, Any], settings: QueueSettings, name: str, burst: bool = False
) -> None:
    """Publish what was loaded, then pull jobs from the model's queue until stopped (SIGTERM: warm stop)."""
    redis = Redis.from_url(settings.redis_url)
    set_model(loaded)
    _state.update(model_name=model, device=info.get("device", ""))
    _state["settings"] = settings
    redis.hset(keys.model_info(model), name, json.dumps(info))
    ModelWorker.heartbeat_ttl = settings.heartbeat_ttl
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


def worker_main(model: str, load: Callable[[WorkerSettings], Any], argv: list[str] | None = None) -> int:
    """Entry point of `python -m <model>_worker`: load the weights once, then serve the queue.

    A missing or corrupt weights file stops the worker here, with the reason, before it takes a job.
    `load` returns the pipeline; its `.card` and `.device` are published as the model's info.
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
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    run_worker(model, pipeline, info, settings, name, burst=burst)
    return 0
