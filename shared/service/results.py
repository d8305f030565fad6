"""PNG results in Redis, so any gateway replica on any host can serve them; they expire with the job."""

from __future__ import annotations

from collections.abc import Sequence

from redis import Redis

from shared.service import keys

MAX_PREVIEWS = 16  # intermediate grids one job may keep (the bound of the requests' `previews` field)


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


def clear_previews(redis: Redis, job_id: str) -> None:
    """Forget the previews of an earlier attempt (their PNG keys expire on their own)."""
    redis.delete(keys.preview_steps(job_id))


def store_preview(redis: Redis, job_id: str, k: int, step: int, png: bytes, ttl: int) -> None:
    """Preview k (the step-th state of the sampler, as a grid PNG); listed only once its PNG is stored."""
    with redis.pipeline() as pipe:
        pipe.set(keys.preview_image(job_id, k), png, ex=ttl)
        pipe.hset(keys.preview_steps(job_id), str(k), step)
        pipe.expire(keys.preview_steps(job_id), ttl)
        pipe.execute()


def list_previews(redis: Redis, job_id: str) -> list[tuple[int, int]]:
    """(k, step) of the stored previews, in order."""
    return parse_previews(redis.hgetall(keys.preview_steps(job_id)))  # type: ignore[arg-type]


def parse_previews(stored: dict[bytes, bytes]) -> list[tuple[int, int]]:
    """(k, step) in order, from the HGETALL of `keys.preview_steps` (for callers that pipeline it)."""
    return sorted((int(k), int(step)) for k, step in stored.items())


def load_preview(redis: Redis, job_id: str, k: int) -> bytes | None:
    if not redis.hexists(keys.preview_steps(job_id), str(k)):
        return None  # left over from an earlier attempt, or never taken
    return redis.get(keys.preview_image(job_id, k))  # type: ignore[return-value]
