"""The diffusion job as RQ runs it: JSON request in, PNGs into Redis, JSON summary out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from diffusion_worker.sample import generate
from shared.diffusion.pipeline import DiffusionPipeline, SampleParams
from shared.diffusion.samplers import SamplerKind
from shared.labels import labels_for
from shared.seeding import seeds_from
from shared.service.worker import ProgressReporter, get_model, run_job


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
    )
    pipeline.check(params)
    return params


def generate_images(request: dict[str, Any]) -> dict[str, Any]:
    pipeline: DiffusionPipeline = get_model()

    def prepare() -> tuple[int, Callable[[ProgressReporter], torch.Tensor]]:
        params = params_from_request(pipeline, request)
        return params.steps, lambda callback: generate(pipeline, params, callback)

    return run_job(prepare)
