"""The diffusion job as RQ runs it: JSON request in, PNGs into Redis, JSON summary out.

`generate_images` is the function the gateway enqueues; the worker runs it alone, or batches compatible
queued jobs into one sampling run (shared/service/batching.py) through `job_model`.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from diffusion_worker.sample import generate
from shared.diffusion.pipeline import DiffusionPipeline, SampleParams
from shared.diffusion.samplers import SamplerKind
from shared.labels import labels_for
from shared.seeding import seeds_from
from shared.service.batching import JobModel
from shared.service.worker import run_job


def params_from_request(pipeline: DiffusionPipeline, request: dict[str, Any]) -> SampleParams:
    """SampleParams from the gateway's validated request (see gateway/schemas.py)."""
    n, steps = int(request["num_images"]), int(request["steps"])
    sampler = request.get("sampler") or (
        SamplerKind.DDPM.value if steps == pipeline.diffusion.num_timesteps else SamplerKind.DDIM.value
    )
    class_label = request.get("class_label")
    params = SampleParams(
        seeds=seeds_from(int(request["seed"]), n),
        sampler=sampler,
        steps=steps,
        eta=float(request.get("eta", 0.0)),
        labels=labels_for(
            None if class_label is None else str(class_label),
            n,
            pipeline.config.num_classes,
            pipeline.config.class_names,
        ),
        guidance_scale=float(request.get("guidance_scale", 1.0)),
        guidance_interval=request.get("guidance_interval"),
    )
    pipeline.check(params)
    return params


def job_model(pipeline: DiffusionPipeline) -> JobModel:
    return JobModel(
        params_from_request=partial(params_from_request, pipeline),
        generate=partial(generate, pipeline),
        steps_of=lambda params: params.steps,
    )


def generate_images(request: dict[str, Any]) -> dict[str, Any]:
    return run_job(request)
