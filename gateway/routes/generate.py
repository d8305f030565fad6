"""POST /generate/{diffusion,ebm}: validate, fill in a seed, enqueue, answer 202 with where to poll."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from gateway.access import Caller, check_capacity, check_compute, check_webhook, rate_limit
from gateway.deps import SettingsDep, StoreDep
from gateway.responses import AUTH, BODY, BUSY, REDIS_DOWN, invalid
from gateway.schemas import DiffusionRequest, EBMRequest, JobAccepted, new_seed

router = APIRouter(prefix="/generate", tags=["generate"])
RESPONSES = {
    **AUTH, **BODY, **BUSY, **REDIS_DOWN,
    **invalid("a field is out of bounds (a list of field errors), or num_images x steps over the limit or a webhook "
              "this service may not call (a sentence)"),
}  # fmt: skip


async def _accept(
    model: str,
    body: DiffusionRequest | EBMRequest,
    store: StoreDep,
    settings: SettingsDep,
    who: str | None,
    request: Request,
    response: Response,
) -> JobAccepted:
    if body.webhook is not None:
        check_webhook(body.webhook, settings)
    check_compute(body.num_images, body.steps, settings)
    params = body.model_dump()
    if params["webhook"] is None:  # recorded with the job only when there is one
        del params["webhook"], params["webhook_events"]
    if params["seed"] is None:
        params["seed"] = new_seed()
    await rate_limit(store.aredis, settings, who)
    check_capacity(await store.aredis.llen(store.queue(model).key), settings, model)
    job, position = await store.asubmit_with_position(model, params, owner=who)  # on the event loop, no thread
    status_url = str(request.url_for("get_job", job_id=job.id))
    response.headers["Location"] = status_url
    return JobAccepted(job_id=job.id, status="queued", status_url=status_url, queue_position=position)


@router.post("/diffusion", status_code=status.HTTP_202_ACCEPTED, response_model=JobAccepted, responses=RESPONSES)
async def generate_diffusion(
    body: DiffusionRequest, store: StoreDep, settings: SettingsDep, who: Caller, request: Request, response: Response
) -> JobAccepted:
    """Queue a diffusion job: DDPM (all 1000 steps), DDIM or DPM-Solver++(2M) (`sampler`, fewer steps).

    Classifier-free guidance (`guidance_scale`) acts on images with a class label only, and with
    `guidance_interval` only at steps whose noise level sigma_t lies in (sigma_lo, sigma_hi].
    """
    return await _accept("diffusion", body, store, settings, who, request, response)


@router.post("/ebm", status_code=status.HTTP_202_ACCEPTED, response_model=JobAccepted, responses=RESPONSES)
async def generate_ebm(
    body: EBMRequest, store: StoreDep, settings: SettingsDep, who: Caller, request: Request, response: Response
) -> JobAccepted:
    """Queue a Langevin-dynamics job on the energy-based model."""
    return await _accept("ebm", body, store, settings, who, request, response)
