"""A real ModelWorker (in this process, on a real Redis) running batches through RQ's bookkeeping."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from redis import Redis
from rq import Queue, Retry
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from shared.service import keys, worker
from shared.service.batching import JobModel

FUNC = "diffusion_worker.jobs.generate_images"  # calls shared.service.worker.run_job, which uses MODEL here
POISON = 666  # a seed whose run fails, alone or in a batch


@dataclass(frozen=True)
class Params:
    seeds: tuple[int, ...]
    labels: tuple[int | None, ...] | None
    steps: int


def generate(params: Params, callback: Any) -> torch.Tensor:
    if len(params.seeds) > 2:
        raise RuntimeError("out of memory: runs of more than 2 images fail")
    if POISON in params.seeds:
        raise ValueError("seed 666 cannot be sampled")
    for step in range(1, params.steps + 1):
        callback(step, params.steps, None)
    return torch.tensor(params.seeds, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 2, 2).contiguous()


MODEL = JobModel(
    params_from_request=lambda r: Params(seeds=(r["seed"],) * r["num_images"], labels=None, steps=r["steps"]),
    generate=generate,
    steps_of=lambda params: params.steps,
)


@pytest.fixture
def redis(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Redis]:
    connection = Redis.from_url(redis_url)
    connection.flushdb()
    monkeypatch.setattr(worker, "_state", {})
    yield connection
    connection.flushdb()


def run_worker(redis: Redis, bodies: list[dict[str, Any]]) -> list[Job]:
    queue = Queue("diffusion", connection=redis, serializer=JSONSerializer)
    jobs = [
        queue.enqueue(FUNC, kwargs={"request": body}, retry=Retry(max=2), meta={"model": "diffusion"})
        for body in bodies
    ]
    w = worker.ModelWorker([queue], connection=redis, serializer=JSONSerializer, name="test-worker")
    w.batch_max_images, w.job_model = 16, MODEL
    worker.set_model(None, MODEL)
    worker._state["worker"] = w
    w.work(burst=True)
    for job in jobs:
        job.refresh()
    return jobs


def test_a_batch_that_fails_as_a_batch_runs_its_jobs_alone_and_only_the_bad_one_fails(redis: Redis) -> None:
    jobs = run_worker(redis, [{"seed": s, "num_images": 1, "steps": 3} for s in (1, POISON, 2)])
    assert [job.get_status() for job in jobs] == [JobStatus.FINISHED, JobStatus.FAILED, JobStatus.FINISHED]
    assert "seed 666" in jobs[1].latest_result().exc_string
    assert jobs[1].retries_left == 0  # its own failure: not retried
    for job in (jobs[0], jobs[2]):
        assert job.meta["attempts"] == 1 and job.meta["batch_size"] == 1  # counted once, then run alone
        assert job.meta["progress"]["step"] == 3
        assert redis.exists(keys.result_image(job.id, 0))
    queue = Queue("diffusion", connection=redis, serializer=JSONSerializer)
    assert queue.count == 0 and queue.started_job_registry.count == 0
    assert queue.intermediate_queue.get_job_ids() == []


def test_a_batch_that_succeeds_finishes_every_job_with_its_own_images(redis: Redis) -> None:
    jobs = run_worker(redis, [{"seed": s, "num_images": 1, "steps": 4} for s in (7, 9)])
    assert [job.get_status() for job in jobs] == [JobStatus.FINISHED] * 2
    assert [job.meta["batch_size"] for job in jobs] == [2, 2]
    assert [job.return_value()["batch_size"] for job in jobs] == [2, 2]
    pngs = [redis.get(keys.result_image(job.id, 0)) for job in jobs]
    assert pngs[0] != pngs[1]  # image k of the run went to job k
    queue = Queue("diffusion", connection=redis, serializer=JSONSerializer)
    assert queue.finished_job_registry.count == 2 and queue.started_job_registry.count == 0
    assert queue.intermediate_queue.get_job_ids() == []
