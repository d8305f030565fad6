"""PNG results in Redis, so any gateway replica on any host can serve them; they expire with the job."""

from __future__ import annotations

from collections.abc import Sequence

from redis import Redis

from shared.service import keys


def store_results(redis: Redis, job_id: str, images: Sequence[bytes], grid: bytes, ttl: int) -> None:
    """All PNGs of a job in one pipeline, each with the same TTL."""
    with redis.pipeline() as pipe:
        for k, png in enumerate(images):
            pipe.set(keys.result_image(job_id, k), png, ex=ttl)
        pipe.set(keys.result_grid(job_id), grid, ex=ttl)
        pipe.execute()


def load_image(redis: Redis, job_id: str, k: int) -> bytes | None:
    return redis.get(keys.result_image(job_id, k))  # type: ignore[return-value]


def load_grid(redis: Redis, job_id: str) -> bytes | None:
    return redis.get(keys.result_grid(job_id))  # type: ignore[return-value]
