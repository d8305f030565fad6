"""The EBM job as RQ runs it: JSON request in, PNGs into Redis, JSON summary out (batched like diffusion jobs)."""

from __future__ import annotations

from functools import partial
from typing import Any

from ebm_worker.sample import generate
from shared.ebm.pipeline import EBMPipeline, EBMSampleParams
from shared.labels import labels_for
from shared.seeding import seeds_from
from shared.service.batching import JobModel
from shared.service.worker import run_job


def params_from_request(pipeline: EBMPipeline, request: dict[str, Any]) -> EBMSampleParams:
    """EBMSampleParams from the gateway's validated request; unset fields take the model card's values."""
    n = int(request["num_images"])
    class_label = request.get("class_label")
    cfg = pipeline.config
    return pipeline.sample_params(
        seeds_from(int(request["seed"]), n),
        labels_for(None if class_label is None else str(class_label), n, cfg.num_classes, cfg.class_names),
        guidance_scale=request.get("guidance_scale"),
        **{name: request.get(name) for name in ("steps", "step_size", "noise_scale")},
    )


def job_model(pipeline: EBMPipeline) -> JobModel:
    return JobModel(
        params_from_request=partial(params_from_request, pipeline),
        generate=partial(generate, pipeline),
        steps_of=lambda params: pipeline.total_steps(params.langevin),
    )


def generate_images(request: dict[str, Any]) -> dict[str, Any]:
    return run_job(request)
