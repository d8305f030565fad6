"""GET /jobs/{id}, its PNGs, and DELETE to cancel."""

from __future__ import annotations

from anyio import to_thread
from fastapi import APIRouter, HTTPException, Request, Response, status
from rq.job import Job

from gateway.access import Caller
from gateway.deps import RedisDep, StoreDep
from gateway.jobs import JobConflictError, JobStore
from gateway.responses import JOB_ROUTE, NOT_FINISHED, invalid
from gateway.schemas import CancelResponse, JobStatus
from shared.service.results import load_grid, load_image, load_preview

router = APIRouter(prefix="/jobs", tags=["jobs"])
PNG = {200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}, "description": "PNG"}}
BAD_INDEX = invalid("k is not an integer")


def _owned(job: Job | None, job_id: str, who: str | None) -> Job:
    """The job, if it exists and belongs to the caller's key; otherwise 404, so ids leak nothing."""
    if job is None or job.meta.get("owner") != who:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id!r}")
    return job


def _job(store: JobStore, job_id: str, who: str | None) -> Job:
    return _owned(store.fetch(job_id), job_id, who)


@router.get("/{job_id}", response_model=JobStatus, responses=JOB_ROUTE)
async def get_job(job_id: str, store: StoreDep, who: Caller, request: Request) -> JobStatus:
    """Status, progress, queue position, timestamps, parameters, error and result URLs of a job."""
    # One Redis round trip on the async client (its timeout turns a hung Redis into a 503); the usual poll is
    # then described on the event loop, and only a job whose description reads Redis again goes to a thread.
    job, lookups = await store.afetch_with_lookups(job_id) or (None, None)
    job = _owned(job, job_id, who)
    assert lookups is not None
    if store.describe_reads_redis(job, lookups):
        return await to_thread.run_sync(store.describe, job, str(request.base_url), lookups)
    return store.describe(job, str(request.base_url), lookups)


def _png(store: JobStore, job_id: str, who: str | None, data: bytes | None) -> Response:
    job = _job(store, job_id, who)
    state = store.state(job)
    if state != "finished":
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} is {state}; results exist once it is finished")
    if data is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"the results of job {job_id} expired or do not exist")
    return Response(content=data, media_type="image/png")


@router.get(
    "/{job_id}/images/{k}.png", response_class=Response, responses={**PNG, **JOB_ROUTE, **NOT_FINISHED, **BAD_INDEX}
)
def get_image(job_id: str, k: int, store: StoreDep, redis: RedisDep, who: Caller) -> Response:
    """Image k (0-based) of a finished job."""
    return _png(store, job_id, who, load_image(redis, job_id, k) if k >= 0 else None)


@router.get("/{job_id}/grid.png", response_class=Response, responses={**PNG, **JOB_ROUTE, **NOT_FINISHED})
def get_grid(job_id: str, store: StoreDep, redis: RedisDep, who: Caller) -> Response:
    """All images of a finished job in one grid."""
    return _png(store, job_id, who, load_grid(redis, job_id))


@router.get("/{job_id}/previews/{k}.png", response_class=Response, responses={**PNG, **JOB_ROUTE, **BAD_INDEX})
def get_preview(job_id: str, k: int, redis: RedisDep, store: StoreDep, who: Caller) -> Response:
    """Intermediate grid k of a job that asked for previews; available while it runs, and after."""
    _job(store, job_id, who)
    data = load_preview(redis, job_id, k) if k >= 0 else None
    if data is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} has no preview {k} (yet)")
    return Response(content=data, media_type="image/png")


@router.delete("/{job_id}", response_model=CancelResponse, responses={**JOB_ROUTE, **NOT_FINISHED})
def cancel_job(job_id: str, store: StoreDep, who: Caller) -> CancelResponse:
    """A queued job never runs; a running job stops at its next step; a finished job answers 409."""
    job = _job(store, job_id, who)
    try:
        outcome = store.cancel(job)
    except JobConflictError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    return CancelResponse(job_id=job_id, status=outcome)  # type: ignore[arg-type]
