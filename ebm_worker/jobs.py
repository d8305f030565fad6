"""The EBM job as RQ runs it: JSON request in, PNGs into Redis, JSON summary out."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from ebm_worker.sample import generate
from shared.ebm.pipeline import EBMPipeline, EBMSampleParams
from shared.labels import labels_for
from shared.seeding import seeds_from
from shared.service.worker import ProgressReporter, get_model, run_job


def params_from_request(pipeline: EBMPipeline, request: dict[str, Any]) -> EBMSampleParams:
    """EBMSampleParams from the gateway's validated request; unset fields take the model card's values."""
    n = int(request["num_images"])
    overrides = {name: request[name] for name in ("steps", "step_size", "noise_scale") if request.get(name) is not None}
    class_label = request.get("class_label")
    params = EBMSampleParams(
        seeds=seeds_from(int(request["seed"]), n),
        langevin=dataclasses.replace(pipeline.default_langevin, **overrides),
        labels=labels_for(
            None if class_label is None else str(class_label),
            n,
            pipeline.config.num_classes,
            pipeline.config.class_names,
        ),
    )
    pipeline.check(params)
    return params


def generate_images(request: dict[str, Any]) -> dict[str, Any]:
    pipeline: EBMPipeline = get_model()

    def prepare() -> tuple[int, Callable[[ProgressReporter], torch.Tensor]]:
        params = params_from_request(pipeline, request)
        return params.langevin.steps, lambda callback: generate(pipeline, params, callback)

    return run_job(prepare)
