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


def job_events(job_id: str) -> str:
    """Stream: what changed in a job (started, progress, preview, finished, ...), as the worker and gateway
    publish it; it expires with the job. Read by the gateway's `GET /jobs/{id}/events`."""
    return f"{PREFIX}:events:{job_id}"


def queue_events(queue: str) -> str:
    """Stream: a job left the queue (started or canceled), so the positions of the others moved."""
    return f"{PREFIX}:events:queue:{queue}"


def event_streams(owner: str) -> str:
    """Sorted set: the open event streams of one API key (member: a stream's token, score: when it lapses)."""
    return f"{PREFIX}:sse:{owner}"


WEBHOOK_OUTBOX = f"{PREFIX}:webhooks:outbox"  # stream: webhook events to send (consumer group of the dispatchers)
WEBHOOK_GROUP = "dispatchers"


def webhook_record(job_id: str) -> str:
    """Hash: a job's webhook deliveries so far (attempts, last HTTP status, ...); expires with the job."""
    return f"{PREFIX}:webhook:{job_id}"
