"""Every Redis key the project writes besides RQ's own, defined once."""

from __future__ import annotations

PREFIX = "genservice"
QUEUES = {"diffusion": "diffusion", "ebm": "ebm"}  # model name -> RQ queue name


def result_image(job_id: str, k: int) -> str:
    return f"{PREFIX}:result:{job_id}:image:{k}"


def result_grid(job_id: str) -> str:
    return f"{PREFIX}:result:{job_id}:grid"


def preview_image(job_id: str, k: int) -> str:
    return f"{PREFIX}:result:{job_id}:preview:{k}"


def preview_steps(job_id: str) -> str:
    """Hash: preview index k -> the sampling step it shows."""
    return f"{PREFIX}:result:{job_id}:previews"


def cancel_flag(job_id: str) -> str:
    return f"{PREFIX}:cancel:{job_id}"


def model_info(model: str) -> str:
    return f"{PREFIX}:model:{model}"
