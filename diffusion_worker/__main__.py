"""`python -m diffusion_worker`: load the UNet once, then run diffusion jobs from the "diffusion" queue.

Settings come from the environment (shared/service/settings.py): REDIS_URL, GENSERVICE_DIFFUSION_WEIGHTS,
GENSERVICE_DEVICE, GENSERVICE_RUNTIME, GENSERVICE_PRECISION, ... `--burst` exits when the queue is empty. The
engine and precision it picked are in its start-up log and in GET /models/info (`runtime`).
"""

from __future__ import annotations

import sys

from diffusion_worker.jobs import job_model
from shared.diffusion.pipeline import DiffusionPipeline
from shared.service.settings import WorkerSettings
from shared.service.worker import worker_main


def load(settings: WorkerSettings) -> DiffusionPipeline:
    return DiffusionPipeline.from_pretrained(
        settings.diffusion_weights, device=settings.device, runtime=settings.runtime, precision=settings.precision
    )


if __name__ == "__main__":
    raise SystemExit(worker_main("diffusion", load, job_model, sys.argv[1:]))
