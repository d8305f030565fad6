"""`python -m ebm_worker`: load the energy network once, then run Langevin jobs from the "ebm" queue.

Settings come from the environment (shared/service/settings.py): REDIS_URL, GENSERVICE_EBM_WEIGHTS,
GENSERVICE_DEVICE, ... `--burst` exits when the queue is empty.
"""

from __future__ import annotations

import sys

from ebm_worker.jobs import job_model
from shared.ebm.pipeline import EBMPipeline
from shared.service.settings import WorkerSettings
from shared.service.worker import worker_main


def load(settings: WorkerSettings) -> EBMPipeline:
    return EBMPipeline.from_pretrained(settings.ebm_weights, device=settings.device)


if __name__ == "__main__":
    raise SystemExit(worker_main("ebm", load, job_model, sys.argv[1:]))
