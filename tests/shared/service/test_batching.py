"""Which jobs may share a sampling run, how their parameters combine, and how queued jobs are claimed."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from shared.diffusion.pipeline import SampleParams
from shared.ebm.langevin import LangevinParams
from shared.ebm.pipeline import EBMSampleParams
from shared.service.batching import JobModel, Plan, batch_key, claim_compatible, combine, request_of, slices

FUNC = "diffusion_worker.jobs.generate_images"


def test_seeds_and_labels_do_not_split_a_batch_everything_else_does() -> None:
    base = SampleParams(seeds=(1,), sampler="ddim", steps=50, labels=(3,), guidance_scale=2.0)
    same = SampleParams(seeds=(7, 8), sampler="ddim", steps=50, labels=(0, 9), guidance_scale=2.0)
    assert batch_key(base) == batch_key(same)
    for other in (
        SampleParams(seeds=(1,), sampler="ddim", steps=51, labels=(3,), guidance_scale=2.0),
        SampleParams(seeds=(1,), sampler="ddim", steps=50, labels=(3,), guidance_scale=3.0),
        SampleParams(seeds=(1,), sampler="ddim", steps=50, labels=(3,), guidance_scale=2.0, eta=0.5),
        SampleParams(seeds=(1,), sampler="ddim", steps=50, labels=None, guidance_scale=2.0),  # unconditional
    ):
        assert batch_key(other) != batch_key(base)
    ebm = EBMSampleParams(seeds=(1,), langevin=LangevinParams(steps=50))
    assert batch_key(ebm) != batch_key(EBMSampleParams(seeds=(1,), langevin=LangevinParams(steps=60)))
    assert batch_key(ebm) == batch_key(EBMSampleParams(seeds=(5, 6), langevin=LangevinParams(steps=50)))
    guided = EBMSampleParams(seeds=(1,), langevin=LangevinParams(steps=50), guidance_scale=3.0)
    assert batch_key(guided) != batch_key(ebm)  # another guidance is another chain


def plan(params: Any) -> Plan:
    return Plan(params=params, steps=params.steps, num_images=len(params.seeds), key=batch_key(params))


def test_combined_params_keep_each_jobs_seeds_and_labels_in_order() -> None:
    plans = [
        plan(SampleParams(seeds=(1,), sampler="ddim", steps=10, labels=(3,))),
        plan(SampleParams(seeds=(7, 8), sampler="ddim", steps=10, labels=(0, 9))),
    ]
    run = combine(plans)
    assert run.seeds == (1, 7, 8) and run.labels == (3, 0, 9) and run.steps == 10
    assert slices(plans) == [slice(0, 1), slice(1, 3)]
    rows = torch.arange(3)
    assert [rows[s].tolist() for s in slices(plans)] == [[0], [1, 2]]
    with pytest.raises(ValueError, match="equal batch keys"):
        combine([*plans, plan(SampleParams(seeds=(2,), sampler="ddim", steps=11, labels=(1,)))])


@dataclass(frozen=True)
class Params:
    seeds: tuple[int, ...]
    labels: tuple[int | None, ...] | None
    steps: int


def params_from_request(request: dict[str, Any]) -> Params:
    if request["steps"] < 1:
        raise ValueError("steps must be >= 1")
    n = request["num_images"]
    return Params(seeds=tuple(range(request["seed"], request["seed"] + n)), labels=(0,) * n, steps=request["steps"])


MODEL = JobModel(params_from_request, generate=lambda params, callback: torch.zeros(0), steps_of=lambda p: p.steps)


@pytest.fixture
def queue(redis_url: str) -> Iterator[Queue]:
    redis = Redis.from_url(redis_url)
    redis.flushdb()
    yield Queue("diffusion", connection=redis, serializer=JSONSerializer)
    redis.flushdb()


def test_claims_compatible_queued_jobs_in_order_up_to_the_image_budget(queue: Queue) -> None:
    def enqueue(steps: int, n: int, func: str = FUNC) -> str:
        return queue.enqueue(func, kwargs={"request": {"steps": steps, "num_images": n, "seed": 1}}).id

    leader_id = enqueue(10, 1)
    fits_2 = enqueue(10, 2)
    other_steps = enqueue(11, 1)
    invalid = enqueue(0, 1)
    too_big = enqueue(10, 3)
    other_function = enqueue(10, 1, func="ebm_worker.jobs.generate_images")
    fits_1 = enqueue(10, 1)
    leader = queue.dequeue_any([queue], None, connection=queue.connection, serializer=JSONSerializer)[0]
    assert leader.id == leader_id and request_of(leader) == {"steps": 10, "num_images": 1, "seed": 1}

    claimed = claim_compatible(queue.connection, queue, leader, MODEL.plan(request_of(leader)), MODEL, max_images=4)
    assert [job.id for job, _ in claimed] == [fits_2, fits_1]
    assert [p.num_images for _, p in claimed] == [2, 1]
    assert queue.job_ids == [other_steps, invalid, too_big, other_function]
    # Claimed jobs sit on RQ's intermediate queue (recovered by RQ if this worker dies before starting them).
    assert set(queue.intermediate_queue.get_job_ids()) >= {fits_2, fits_1}
    # Claimed jobs are not claimed twice; the next scan finds only what is still queued and fits.
    again = claim_compatible(queue.connection, queue, leader, MODEL.plan(request_of(leader)), MODEL, max_images=4)
    assert [job.id for job, _ in again] == [too_big]
    full = MODEL.plan({"steps": 10, "num_images": 4, "seed": 1})
    assert claim_compatible(queue.connection, queue, leader, full, MODEL, max_images=4) == []
