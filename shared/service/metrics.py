"""Job and worker metrics kept in Redis, so that one scrape of any gateway replica sees all workers.

Workers write; the gateway's Prometheus collector (gateway/metrics.py) reads. Histograms are stored
as cumulative bucket counters (Prometheus' own layout), so N workers add into the same series.
"""

from __future__ import annotations

import json
from typing import Any

from redis import Redis

from shared.service import keys

WAIT_BUCKETS = (0.05, 0.25, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)  # seconds queued
RUN_BUCKETS = (0.5, 2.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0, 10800.0)  # seconds running


def histogram_key(kind: str, model: str) -> str:
    return f"{keys.PREFIX}:metrics:{kind}:{model}"


def images_key() -> str:
    return f"{keys.PREFIX}:metrics:images"


def worker_key(name: str) -> str:
    return f"{keys.PREFIX}:metrics:worker:{name}"


def workers_index_key() -> str:
    return f"{keys.PREFIX}:metrics:workers"


def observe(redis: Redis, kind: str, model: str, value: float, buckets: tuple[float, ...]) -> None:
    """One observation into the cumulative histogram `kind` of `model`."""
    key = histogram_key(kind, model)
    with redis.pipeline() as pipe:
        for bound in buckets:
            if value <= bound:
                pipe.hincrby(key, f"le:{bound}", 1)
        pipe.hincrby(key, "count", 1)
        pipe.hincrbyfloat(key, "sum", value)
        pipe.execute()


def record_job(redis: Redis, model: str, wait_seconds: float, run_seconds: float, images: int) -> None:
    observe(redis, "wait", model, wait_seconds, WAIT_BUCKETS)
    observe(redis, "run", model, run_seconds, RUN_BUCKETS)
    redis.hincrby(images_key(), model, images)


def read_histogram(
    redis: Redis, kind: str, model: str, buckets: tuple[float, ...]
) -> tuple[list[tuple[str, float]], float]:
    """([(le, cumulative count), ..., ("+Inf", count)], sum) for prometheus_client's HistogramMetricFamily."""
    raw = {k.decode(): v.decode() for k, v in redis.hgetall(histogram_key(kind, model)).items()}
    count = float(raw.get("count", 0))
    series = [(str(bound), float(raw.get(f"le:{bound}", 0))) for bound in buckets]
    return [*series, ("+Inf", count)], float(raw.get("sum", 0.0))


def publish_worker(redis: Redis, name: str, status: dict[str, Any], ttl: int) -> None:
    """A worker's live status (current job, steps/s, images, device, memory); it expires with the worker."""
    with redis.pipeline() as pipe:
        pipe.set(worker_key(name), json.dumps(status), ex=ttl)
        pipe.sadd(workers_index_key(), name)
        pipe.execute()


def read_workers(redis: Redis) -> dict[str, dict[str, Any]]:
    """Live workers' status; names of expired workers are dropped from the index."""
    out: dict[str, dict[str, Any]] = {}
    for raw_name in redis.smembers(workers_index_key()):
        name = raw_name.decode()
        data = redis.get(worker_key(name))
        if data is None:
            redis.srem(workers_index_key(), name)
            continue
        out[name] = json.loads(data)
    return out
