"""The trajectory of a job: a few evenly spaced intermediate grids, kept as PNGs beside its results.

For diffusion the sampler hands the callback its current x_0 prediction; for Langevin dynamics the
chain state x. A job asks for `previews` of them (0: none); the recorder takes the first step at or
past each of the evenly spaced targets, so it works whether the callback sees every step or not.
"""

from __future__ import annotations

import logging
import math

import torch
from redis import Redis
from rq.job import Job

from shared.images import grid_image, png_bytes, to_uint8
from shared.service.results import MAX_PREVIEWS, clear_previews, store_preview
from shared.service.settings import QueueSettings

logger = logging.getLogger(__name__)


def preview_steps(count: int, total: int) -> list[int]:
    """`count` evenly spaced steps in 1..total ending at total, without repeats: (4, 20) -> [5, 10, 15, 20]."""
    count = min(max(count, 0), MAX_PREVIEWS, total)
    return sorted({math.ceil(total * (i + 1) / count) for i in range(count)})


class PreviewRecorder:
    """Stores the chosen steps' previews of one job as grid PNGs in Redis, with the results' TTL."""

    def __init__(self, redis: Redis, job_id: str, count: int, ttl: int) -> None:
        self.redis, self.job_id, self.count, self.ttl = redis, job_id, count, ttl
        self.targets: list[int] | None = None  # known once the first step tells the total
        self.passed = self.stored = 0
        clear_previews(redis, job_id)

    @classmethod
    def for_job(cls, job: Job) -> PreviewRecorder | None:
        """The recorder of a job that asked for previews (its request's `previews`), else None."""
        request = job.kwargs.get("request") or {}
        count = min(int(request.get("previews") or 0), MAX_PREVIEWS)
        if count <= 0:
            return None
        ttl = job.result_ttl if job.result_ttl and job.result_ttl > 0 else QueueSettings().result_ttl
        return cls(job.connection, job.id, count, ttl)

    def __call__(self, step: int, total: int, preview: torch.Tensor) -> None:
        """preview: the job's own images at this step, float in [-1, 1], (N, C, H, W)."""
        if self.targets is None:
            self.targets = preview_steps(self.count, total)
        if self.passed >= len(self.targets) or step < self.targets[self.passed]:
            return
        while self.passed < len(self.targets) and self.targets[self.passed] <= step:
            self.passed += 1  # a callback that skipped steps passes several targets at once
        k, self.stored = self.stored, self.stored + 1
        store_preview(self.redis, self.job_id, k, step, png_bytes(grid_image(to_uint8(preview))), self.ttl)
        logger.debug("job %s: preview %d at step %d/%d", self.job_id, k, step, total)
