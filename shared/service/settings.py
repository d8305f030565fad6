"""Settings every process of the service reads from the environment (pydantic-settings).

Each service has one `Settings` class with its own prefix; what they share lives here. `REDIS_URL`
is read without a prefix, as RQ's tools and Docker images expect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class QueueSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GENSERVICE_", extra="ignore")

    redis_url: str = Field(
        "redis://localhost:6379/0", validation_alias=AliasChoices("REDIS_URL", "GENSERVICE_REDIS_URL")
    )
    result_ttl: int = Field(24 * 3600, ge=60, description="seconds finished jobs and their PNGs are kept")
    failure_ttl: int = Field(7 * 24 * 3600, ge=60, description="seconds failed jobs are kept")
    diffusion_job_timeout: int = Field(
        3 * 3600, ge=10, description="hard limit for one diffusion job (16 images x 1000 steps on a CPU fit)"
    )
    ebm_job_timeout: int = Field(3600, ge=10, description="hard limit for one EBM job")
    heartbeat_ttl: int = Field(
        60, ge=5, description="a started job whose worker is silent this long counts as abandoned and is retried"
    )
    max_retries: int = Field(2, ge=0, description="retries of a job whose worker died")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR; logs are JSON lines")
    # webhooks (shared/service/webhooks.py: the gateway checks a request's URL, `python -m gateway.webhooks` sends)
    webhook_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated destinations webhooks may go to: host names (`hooks.example.com`, "
        "`*.example.com`) and networks (`203.0.113.0/24`, `127.0.0.1/32`); empty: webhooks are off. Private, "
        "loopback and link-local addresses need a network entry that contains them",
    )
    webhook_secret: str = Field(
        "", description="the Standard Webhooks signing secret (`whsec_` + base64); webhooks are off without one"
    )
    webhook_max_attempts: int = Field(5, ge=1, le=20, description="sends of one event before it is given up")
    webhook_backoff_seconds: float = Field(
        1.0, gt=0, le=600, description="wait before the first retry; doubled before each next one"
    )
    webhook_timeout: float = Field(5.0, gt=0, le=60, description="seconds one send may take (connect to answer)")
    webhook_progress_interval: float = Field(
        2.0, ge=0, description="at most one `progress` webhook per job this often (seconds)"
    )
    public_url: str = Field(
        "http://localhost:8000/", description="the gateway's address as clients see it: the URLs in webhook bodies"
    )

    @field_validator("webhook_allow", mode="before")
    @classmethod
    def _split_allow(cls, value: object) -> object:
        if isinstance(value, str):
            return [entry.strip() for entry in value.split(",") if entry.strip()]
        return value

    @property
    def webhooks_enabled(self) -> bool:
        return bool(self.webhook_allow and self.webhook_secret)

    def job_timeout(self, model: str) -> int:
        return self.diffusion_job_timeout if model == "diffusion" else self.ebm_job_timeout


MODELS_DIR = Path(__file__).resolve().parent.parent.parent / "models"


class WorkerSettings(QueueSettings):
    """A model worker: which weights, on which device."""

    diffusion_weights: Path = MODELS_DIR / "diffusion"
    ebm_weights: Path = MODELS_DIR / "ebm"
    device: str = Field("auto", description="auto (cuda, mps, cpu), or a torch device name")
    runtime: Literal["auto", "torch", "openvino"] = Field(
        "auto",
        description="the diffusion UNet's engine (shared/diffusion/runtime.py): auto = OpenVINO on a CPU where it "
        "is installed, torch elsewhere (the EBM's Langevin chain needs input gradients: always torch)",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="the diffusion UNet's precision: auto = bf16 on CUDA and on CPUs with native bf16 "
        "(AVX512-BF16, AMX), fp32 elsewhere",
    )
    batch_max_images: int = Field(
        16,
        ge=1,
        le=256,
        description="images one sampling run may hold when compatible queued jobs are batched; 1 = no batching",
    )
