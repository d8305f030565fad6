"""Prometheus metrics of the gateway: HTTP (prometheus-fastapi-instrumentator) plus the queue, the jobs
and every worker, read from Redis at scrape time — one scrape target covers all replicas.

    genservice_queue_jobs{queue, state}             jobs per state: queued, started, finished, failed, canceled, ...
    genservice_job_wait_seconds{model}              histogram: enqueue -> start
    genservice_job_run_seconds{model}               histogram: start -> PNGs stored
    genservice_images_generated_total{model}        images produced
    genservice_worker_steps_per_second{worker,...}  sampling speed of the current (or last) job
    genservice_worker_busy{worker,...}              1 while a job runs
    genservice_worker_images_total{worker,...}      images produced by this worker process
    genservice_worker_max_rss_bytes{worker,...}     peak resident memory of the worker process
    genservice_redis_up                             0 when Redis did not answer this scrape
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_fastapi_instrumentator import Instrumentator
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.serializers import JSONSerializer

from shared.service import keys
from shared.service.metrics import RUN_BUCKETS, WAIT_BUCKETS, images_key, read_histogram, read_workers


class ServiceCollector(Collector):
    def __init__(self, redis: Callable[[], Redis]) -> None:
        self.redis = redis

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("genservice_redis_up", "1 when Redis answered this scrape")
        try:
            metrics = list(self._collect(self.redis()))
        except RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from metrics

    def _collect(self, redis: Redis) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("genservice_queue_jobs", "jobs per queue and state", labels=["queue", "state"])
        images = CounterMetricFamily("genservice_images_generated", "images produced per model", labels=["model"])
        produced = {k.decode(): int(v) for k, v in redis.hgetall(images_key()).items()}
        for model, name in keys.QUEUES.items():
            queue = Queue(name, connection=redis, serializer=JSONSerializer)
            jobs.add_metric([name, "queued"], queue.count)
            for state, registry in (
                ("started", queue.started_job_registry), ("finished", queue.finished_job_registry),
                ("failed", queue.failed_job_registry), ("canceled", queue.canceled_job_registry),
                ("scheduled", queue.scheduled_job_registry),
            ):  # fmt: skip
                jobs.add_metric([name, state], redis.zcard(registry.key))
            images.add_metric([model], produced.get(model, 0))
        yield jobs
        yield images
        for kind, buckets, text in (("wait", WAIT_BUCKETS, "enqueue to start"), ("run", RUN_BUCKETS, "start to end")):
            family = HistogramMetricFamily(f"genservice_job_{kind}_seconds", f"job time, {text}", labels=["model"])
            for model in keys.QUEUES:
                series, total = read_histogram(redis, kind, model, buckets)
                family.add_metric([model], series, total)
            yield family
        yield from self._workers(redis)

    def _workers(self, redis: Redis) -> Iterator[Metric]:
        labels = ["worker", "model", "device"]
        speed = GaugeMetricFamily("genservice_worker_steps_per_second", "sampling steps per second", labels=labels)
        busy = GaugeMetricFamily("genservice_worker_busy", "1 while the worker runs a job", labels=[*labels, "job_id"])
        made = CounterMetricFamily("genservice_worker_images", "images made by this worker process", labels=labels)
        rss = GaugeMetricFamily("genservice_worker_max_rss_bytes", "peak resident memory", labels=labels)
        for name, status in read_workers(redis).items():
            values = [name, status.get("model", ""), status.get("device", "")]
            speed.add_metric(values, float(status.get("steps_per_second") or 0.0))
            busy.add_metric([*values, status.get("current_job") or ""], 1.0 if status.get("current_job") else 0.0)
            made.add_metric(values, int(status.get("images_generated", 0)))
            rss.add_metric(values, float(status.get("max_rss_bytes", 0)))
        yield from (speed, busy, made, rss)


def setup_metrics(app: FastAPI) -> CollectorRegistry:
    """HTTP metrics by route and status, and the service collector, at GET /metrics (one registry per app)."""
    registry = CollectorRegistry()
    registry.register(ServiceCollector(lambda: app.state.redis))
    Instrumentator(registry=registry, excluded_handlers=["/metrics"]).instrument(app).expose(
        app, tags=["system"], response_class=PlainTextResponse, summary="Prometheus metrics (text format)"
    )
    return registry
