"""Item 2: queued one-image jobs batched into one sampling run (shared/service/batching.py).

`measure_batching` starts a live stack (Redis, gateway, one diffusion worker) whose worker gets
`GENSERVICE_BATCH_MAX_IMAGES=<n>` in its environment, submits `jobs` one-image jobs at once through
the gateway, waits for all of them and reports the wall time from the first submit to the last
finish, and each job's latency (enqueue to end, from the job's own timestamps). The suite runs it
with n = 1 (one job at a time) and n = 16 (batched), one worker using every core; then, with
`split_workers`, the largest n again on one worker process per core with one thread each (threads
against processes on the same cores).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rq.job import Job
from rq.serializers import JSONSerializer

from tests.integration.stack import Stack, wait_until

logger = logging.getLogger(__name__)

BATCH_ENV = "GENSERVICE_BATCH_MAX_IMAGES"


@dataclass(frozen=True)
class BatchingBenchConfig:
    jobs: int = 16
    steps: int = 50  # DDIM steps per job
    batch_max_images: tuple[int, ...] = (1, 16)
    weights: Path | None = None  # None: the integration tests' tiny model (plumbing only)
    timeout: float = 600.0
    split_workers: bool = True  # add a row: one single-threaded worker per core


def _cores() -> int:
    return os.cpu_count() or 1


def _when(stamp: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(stamp) if stamp else None


def measure_batching(cfg: BatchingBenchConfig, batch_max_images: int, workers: int = 1) -> dict[str, Any]:
    """`workers` diffusion workers sharing the cores: each gets cores // workers threads."""
    threads = max(1, _cores() // workers)
    with tempfile.TemporaryDirectory(prefix="bench-batching-") as tmp:
        stack = Stack(Path(tmp))
        stack.env[BATCH_ENV] = str(batch_max_images)
        stack.env["OMP_NUM_THREADS"] = str(threads)  # the stack's tests pin 1 thread; a worker would not
        if cfg.weights is not None:
            stack.env["GENSERVICE_DIFFUSION_WEIGHTS"] = str(cfg.weights)
        stack.start()
        for k in range(1, workers):
            stack.start_worker("diffusion", name=f"diffusion-worker-{k + 1}")
        wait_until(lambda: stack.workers("diffusion") == workers, 90, f"{workers} diffusion workers")
        try:
            start = time.perf_counter()
            ids = [stack.submit("diffusion", num_images=1, steps=cfg.steps, seed=k)["job_id"] for k in range(cfg.jobs)]
            final = ("finished", "failed", "canceled")
            wait_until(lambda: all(stack.status(i)["status"] in final for i in ids), cfg.timeout, "all jobs", 0.2)
            wall = time.perf_counter() - start
            statuses = [stack.status(i) for i in ids]
            jobs = Job.fetch_many(ids, connection=stack.redis, serializer=JSONSerializer)
            runs = [job.meta.get("batch_size", 0) for job in jobs if job is not None]
        finally:
            stack.close()
    latencies = []
    for s in statuses:
        enqueued, ended = _when(s.get("enqueued_at")), _when(s.get("ended_at"))
        if enqueued and ended:
            latencies.append((ended - enqueued).total_seconds())
    return {
        BATCH_ENV: batch_max_images,
        "workers x threads": f"{workers} x {threads}",
        "jobs": cfg.jobs,
        "steps per job": cfg.steps,
        "finished": sum(s["status"] == "finished" for s in statuses),
        "largest run (jobs)": max(runs),
        "workers that ran jobs": len({s.get("worker") for s in statuses if s.get("worker")}),
        "wall s": wall,
        "images/s": cfg.jobs / wall,
        "median job latency s": statistics.median(latencies) if latencies else None,
        "max job latency s": max(latencies) if latencies else None,
    }


def run_batching_bench(cfg: BatchingBenchConfig) -> dict[str, Any]:
    rows = [measure_batching(cfg, n) for n in cfg.batch_max_images]
    if cfg.split_workers and _cores() > 1:
        rows.append(measure_batching(cfg, max(cfg.batch_max_images), workers=_cores()))
    return {"rows": rows}
