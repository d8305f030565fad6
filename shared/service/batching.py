"""Batching queued jobs: one sampling run for several compatible jobs, each keeping its own seeds,
progress and cancellation.

Why it gives each job its own images: every image draws its noise from its own seeded generator
(shared/seeding.py) and the networks act on each image alone (GroupNorm, attention within an image, no
batch statistics), so mathematically an image does not depend on which other images share its batch.
In floating point it may, in the last bits: another batch shape can get other kernels (oneDNN, cuDNN),
so a batched image equals its unbatched run up to rounding (at most one uint8 level measured), not byte
for byte (README, "Batching"). Jobs are *compatible* when everything
but their seeds and class labels is equal (sampler, steps, eta, guidance, Langevin step size, ...),
and when they are all conditional or all unconditional (guidance is skipped without labels).

How a batch is claimed: the worker dequeues a job as RQ does (and marks itself busy, so a SIGTERM
now is a warm stop); then it scans the head of the same queue and moves each compatible job, one at
a time and atomically (Lua), from the queue onto RQ's intermediate queue, as RQ's own dequeue does.
Right after the scan each claimed job gets its execution (StartedJobRegistry, heartbeats), exactly as
a dequeued job does, so a worker killed mid-batch leaves every job of the batch to be found abandoned
and retried (a retried job then runs alone). Only a worker killed inside the scan itself strands
jobs on the intermediate queue; RQ's maintenance then fails them into their retry after a minute.

Fairness: compatible jobs further back may overtake incompatible ones at the head of the queue; the
scan is bounded (`SCAN_DEPTH`), so an incompatible job waits at most one batch longer.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.job import Job

logger = logging.getLogger(__name__)

SCAN_DEPTH = 64  # queued jobs looked at per batch

# callback(step, total, preview): the sampler's per-step callback (preview: the batch's current images)
StepCallback = Callable[[int, int, "torch.Tensor | None"], None]


@dataclass(frozen=True)
class JobModel:
    """What the worker needs of a model to run (and batch) its jobs.

    `params_from_request(request)` validates a request into a frozen params dataclass with `seeds` and
    `labels` fields (raises ValueError); `generate(params, callback)` returns uint8 images (N, C, H, W);
    `steps_of(params)` is the number of callback steps a run makes.
    """

    params_from_request: Callable[[dict[str, Any]], Any]
    generate: Callable[[Any, StepCallback], torch.Tensor]
    steps_of: Callable[[Any], int]

    def plan(self, request: dict[str, Any]) -> Plan:
        params = self.params_from_request(request)
        return Plan(params=params, steps=self.steps_of(params), num_images=len(params.seeds), key=batch_key(params))


@dataclass(frozen=True)
class Plan:
    """One job's share of a sampling run."""

    params: Any
    steps: int
    num_images: int
    key: Hashable  # jobs with equal keys can share one run


def batch_key(params: Any) -> Hashable:
    """Everything that must be equal for two jobs to share one run: all fields but seeds and labels."""
    shared = [f.name for f in dataclasses.fields(params) if f.name not in ("seeds", "labels")]
    fields = tuple((name, getattr(params, name)) for name in shared)
    return (type(params).__name__, fields, params.labels is None)


def combine(plans: Sequence[Plan]) -> Any:
    """The params of one run that makes every plan's images, in order."""
    if len({plan.key for plan in plans}) != 1:
        raise ValueError("only jobs with equal batch keys can share a run")
    seeds = tuple(seed for plan in plans for seed in plan.params.seeds)
    conditional = plans[0].params.labels is not None
    labels = tuple(label for plan in plans for label in plan.params.labels) if conditional else None
    return dataclasses.replace(plans[0].params, seeds=seeds, labels=labels)


def slices(plans: Sequence[Plan]) -> list[slice]:
    """Each plan's rows in the combined batch."""
    out, start = [], 0
    for plan in plans:
        out.append(slice(start, start + plan.num_images))
        start += plan.num_images
    return out


def request_of(job: Job) -> dict[str, Any] | None:
    """The request a job function was enqueued with (`f(request=...)` by the gateway, or `f(request)`)."""
    request = job.kwargs.get("request") if job.kwargs else (job.args[0] if len(job.args) == 1 else None)
    return request if isinstance(request, dict) else None


# Move one job id from a queue to RQ's intermediate queue, only if it is still queued (another worker may
# have taken it). Returns 1 when this worker now owns the job.
_CLAIM = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


def claim_compatible(
    connection: Redis,
    queue: Queue,
    leader: Job,
    leader_plan: Plan,
    job_model: JobModel,
    max_images: int,
) -> list[tuple[Job, Plan]]:
    """Take queued jobs that can share the leader's run, up to `max_images` images in all, in queue order."""
    budget = max_images - leader_plan.num_images
    if budget <= 0:
        return []
    try:
        ids = [i.decode() if isinstance(i, bytes) else i for i in connection.lrange(queue.key, 0, SCAN_DEPTH - 1)]
        candidates = Job.fetch_many(ids, connection=connection, serializer=queue.serializer)
    except Exception:
        logger.exception("job %s: could not look for jobs to batch with; it runs alone", leader.id)
        return []
    claim = connection.register_script(_CLAIM)
    claimed: list[tuple[Job, Plan]] = []
    for job in candidates:
        if budget <= 0:
            break
        try:  # whatever is wrong with a queued job, it fails on its own turn with its own error
            request = None if job is None or job.func_name != leader.func_name else request_of(job)
            plan = None if request is None else job_model.plan(request)
        except Exception:
            continue
        if plan is None or plan.key != leader_plan.key or plan.num_images > budget:
            continue
        try:
            won = claim(keys=[queue.key, queue.intermediate_queue_key], args=[job.id]) == 1
        except RedisError:
            logger.exception("job %s: a claim failed; running the %d jobs claimed so far", leader.id, len(claimed))
            break
        if won:
            claimed.append((job, plan))
            budget -= plan.num_images
    if claimed:
        logger.info("job %s: batched with %s", leader.id, ", ".join(job.id for job, _ in claimed))
    return claimed
