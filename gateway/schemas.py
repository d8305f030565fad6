"""Request and response bodies of the public API; every field bounded, every route typed."""

from __future__ import annotations

import math
import secrets
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# the routes' error bodies, re-exported (defined once for the gateway and the text service)
from shared.service.http import ErrorBody as ErrorBody
from shared.service.http import UnprocessableBody as UnprocessableBody
from shared.service.results import MAX_PREVIEWS

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MAX_SEED = 2**63 - 1
DDPM_STEPS = 1000  # T of the shipped diffusion model
MAX_SIGMA = 1e6  # bound of a guidance interval (the shipped schedule's largest sigma_t is about 157)
JobState = Literal["queued", "started", "finished", "failed", "canceled"]


def new_seed() -> int:
    """A seed for a request that gave none; recorded with the job so the result can be re-made."""
    return secrets.randbelow(2**31)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_images: int = Field(1, ge=1, le=64, description="images in this job")
    class_label: str | int | None = Field(
        None, description="a CIFAR-10 class name or index 0-9; omitted: any class", examples=["cat", 3]
    )
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED - 64, description="image k uses seed + k; omitted: chosen and recorded"
    )
    previews: int = Field(
        0, ge=0, le=MAX_PREVIEWS,
        description="intermediate grids to keep, evenly spaced over the steps (diffusion: the x_0 prediction; "
        "EBM: the chain state); listed in the job status while it runs",
    )  # fmt: skip

    webhook: str | None = Field(
        None, max_length=2048, pattern=r"^https?://",
        description="an http(s) URL the job's status document is POSTed to on `webhook_events` (signed as Standard "
        "Webhooks describe); only destinations the operator allows (GENSERVICE_WEBHOOK_ALLOW)",
        examples=["https://hooks.example.com/genservice"],
    )  # fmt: skip
    webhook_events: list[Literal["start", "progress", "completed"]] = Field(
        default_factory=lambda: ["completed"], max_length=3,
        description="which events call the webhook: start (a worker took the job), progress (at most every "
        "GENSERVICE_WEBHOOK_PROGRESS_INTERVAL seconds), completed (finished, failed or canceled)",
    )  # fmt: skip

    @field_validator("class_label", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: object) -> object:
        if isinstance(value, bool):
            raise ValueError("a class label is a name or an index, not true/false")
        return value

    @field_validator("class_label")
    @classmethod
    def _known_class(cls, value: str | int | None) -> str | int | None:
        if value is None:
            return None
        if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
            if not 0 <= int(value) < len(CIFAR10_CLASSES):
                raise ValueError(f"class index must be in [0, {len(CIFAR10_CLASSES) - 1}]")
            return int(value)
        if value not in CIFAR10_CLASSES:
            raise ValueError(f"unknown class {value!r}; expected one of: {', '.join(CIFAR10_CLASSES)}")
        return value


class DiffusionRequest(_Request):
    steps: int = Field(
        1000, ge=1, le=1000, description="denoising steps (network evaluations per image); 1000 = full DDPM"
    )
    sampler: Literal["ddpm", "ddim", "dpmpp_2m"] | None = Field(
        None,
        description="ddpm: ancestral sampling, all 1000 steps; ddim: any step count (eta adds noise); dpmpp_2m: "
        "DPM-Solver++(2M), a deterministic second-order solver for few steps (10-50), steps uniform in log-SNR. "
        "Default: ddpm for 1000 steps, ddim for fewer",
    )
    eta: float = Field(
        0.0, ge=0.0, le=1.0, description="DDIM stochasticity: 0 deterministic, 1 DDPM-like (ddim only; 0 for dpmpp_2m)"
    )
    guidance_scale: float = Field(
        1.0, ge=0.0, le=20.0, description="classifier-free guidance; 1 = none; acts only on images with a class label"
    )
    guidance_interval: list[float] | None = Field(
        None,
        min_length=2,
        max_length=2,
        description="[sigma_lo, sigma_hi]: guide only at steps whose noise level sigma_t = sqrt((1 - alpha_bar_t) / "
        "alpha_bar_t) lies in (sigma_lo, sigma_hi] (Kynkaanniemi et al. 2024); other steps skip the unconditional "
        "pass. 0 <= sigma_lo < sigma_hi <= 1e6; omitted: guide at every step. The shipped schedule's sigma runs "
        "from 0.01 (t = 0) to 157 (t = 999)",
        examples=[[0.28, 5.42]],
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"num_images": 4, "steps": 50, "class_label": "cat", "guidance_scale": 3},
                {
                    "num_images": 4,
                    "steps": 20,
                    "sampler": "dpmpp_2m",
                    "class_label": "ship",
                    "guidance_scale": 3,
                    "guidance_interval": [0.28, 5.42],
                },
            ]
        },
    )

    @field_validator("guidance_interval")
    @classmethod
    def _interval_is_ordered(cls, value: list[float] | None) -> list[float] | None:
        if value is None:
            return None
        lo, hi = value
        if not (math.isfinite(lo) and math.isfinite(hi)) or hi > MAX_SIGMA:
            raise ValueError(f"guidance_interval bounds must be finite numbers up to {MAX_SIGMA:g}")
        if lo < 0 or hi <= lo:
            raise ValueError(f"guidance_interval is [sigma_lo, sigma_hi] with 0 <= sigma_lo < sigma_hi, got {value}")
        return value

    @model_validator(mode="after")
    def _sampler_fits_the_options(self) -> DiffusionRequest:
        if self.sampler == "ddpm" and self.steps != DDPM_STEPS:
            raise ValueError(
                f"the ddpm sampler runs all {DDPM_STEPS} steps; use sampler 'ddim' or 'dpmpp_2m' for {self.steps}"
            )
        if self.sampler == "dpmpp_2m" and self.eta > 0:
            raise ValueError("the dpmpp_2m sampler is deterministic: eta must be 0 (eta is DDIM's noise)")
        return self


class EBMRequest(_Request):
    steps: int | None = Field(
        None, ge=1, le=2000, description="Langevin steps (per noise level for a recovery-likelihood model, whose "
        "chain runs them at each of its levels); default: the model card's",
    )  # fmt: skip
    step_size: float | None = Field(
        None, gt=0.0, le=100.0, description="persistent-CD model: x -= step_size / 2 * clip(grad_x E); "
        "recovery-likelihood model: b^2 of its step sizes s_t^2 = b^2 c_t^2 sigma_{t+1}^2; default: the card's",
    )  # fmt: skip
    noise_scale: float | None = Field(
        None, ge=0.0, le=2.0, description="persistent-CD model: std of the noise added each step; "
        "recovery-likelihood model: the factor on its noise s_t z; default: the card's",
    )  # fmt: skip
    guidance_scale: float | None = Field(
        None, ge=0.0, le=20.0, description="guidance on the energy for images with a class label: the chain "
        "follows E(x) + w (E(x, y) - E(x)) = E(x) - w log p(y | x); 1 = none; default: the card's",
    )  # fmt: skip

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"num_images": 4, "steps": 200, "class_label": "ship"}]}
    )


class JobAccepted(BaseModel):
    job_id: str
    status: JobState
    status_url: str
    queue_position: int | None = None


class Progress(BaseModel):
    step: int
    total: int
    fraction: float


class JobResults(BaseModel):
    images: list[str]
    grid: str


class Preview(BaseModel):
    index: int = Field(description="k in /jobs/{job_id}/previews/{k}.png")
    step: int = Field(description="the sampling step the grid shows")
    url: str


class WebhookDelivery(BaseModel):
    """What became of a job's webhook so far."""

    url: str
    events: list[str]
    attempts: int = Field(0, description="POSTs made so far, retries included")
    delivered: int = Field(0, description="events the receiver accepted (a 2xx answer)")
    failed: int = Field(0, description="events given up after GENSERVICE_WEBHOOK_MAX_ATTEMPTS, or refused")
    last_event: str | None = None
    last_status: int | None = Field(None, description="the HTTP status of the last attempt (none: no answer)")
    last_error: str | None = Field(None, description="why the last attempt failed (no answer, refused destination)")


class JobStatus(BaseModel):
    job_id: str
    model: str
    status: JobState
    progress: Progress | None = None
    queue_position: int | None = None
    attempts: int = Field(0, description="executions started so far (more than 1: retried after a worker died)")
    worker: str | None = Field(None, description="the worker that ran (or runs) the job")
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    parameters: dict[str, Any]
    error: str | None = None
    results: JobResults | None = None
    previews: list[Preview] = Field(
        default_factory=list, description="intermediate grids stored so far (when the request asked for previews)"
    )
    webhook: WebhookDelivery | None = Field(None, description="deliveries to the request's webhook, when it has one")


class CancelResponse(BaseModel):
    job_id: str
    status: Literal["canceled", "canceling"]


class QueueInfo(BaseModel):
    queued: int
    started: int
    workers: int


class ModelsInfo(BaseModel):
    models: dict[str, list[dict[str, Any]]] = Field(description="per model, what each live worker loaded")
    queues: dict[str, QueueInfo]


class Health(BaseModel):
    status: Literal["ok"]


class TextServiceState(BaseModel):
    """The legacy text service as the gateway sees it; informational: the image routes never depend on it."""

    status: Literal["ok", "degraded", "unavailable"] = Field(
        description="ok: every model loaded; degraded: some are not (their routes answer 503); unavailable: no answer"
    )
    routes: dict[str, bool] = Field(description="legacy route -> whether it can answer now")
    detail: str | None = Field(None, description="why it is unavailable")


class Readiness(BaseModel):
    status: Literal["ready", "degraded"] = Field(description="ready: Redis answers and every queue has a worker")
    redis: bool
    workers: dict[str, int]
    text_service: TextServiceState | None = Field(None, description="the legacy text routes (not part of `status`)")
