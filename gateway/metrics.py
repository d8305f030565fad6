"""Prometheus metrics of the gateway: HTTP requests per route, plus the queue, the jobs and every worker,
read from Redis at scrape time — one scrape target covers all replicas.

    http_requests_total{handler, method, status}    requests per route template and status class (2xx, 4xx, ...)
    http_request_duration_seconds{handler, method}  histogram: request to last byte of the answer
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

import time
from collections.abc import Callable, Iterator

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.serializers import JSONSerializer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


class HTTPMetrics:
    """Pure ASGI middleware counting requests and their latency by route template (`/jobs/{job_id}`, not per
    id), with the names and labels of prometheus-fastapi-instrumentator, at a tenth of its CPU per request
    (it matches the route a second time, and builds a Request, a Response and a task gathering per request):
    the route is the one the router put in the scope."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry, excluded: tuple[str, ...] = ("/metrics",)) -> None:
        self.app, self.excluded = app, excluded
        self.requests = Counter("http_requests_total", "requests by method, status class and handler",
                                ["method", "status", "handler"], registry=registry)  # fmt: skip
        self.duration = Histogram("http_request_duration_seconds", "request to the answer's last byte, by handler",
                                  ["method", "handler"], buckets=(0.1, 0.5, 1.0), registry=registry)  # fmt: skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            handler = getattr(scope.get("route"), "path", None) or "none"  # none: no route matched (a 404)
            if handler not in self.excluded:
                method = scope["method"]
                self.requests.labels(method, f"{status // 100}xx", handler).inc()
                self.duration.labels(method, handler).observe(time.perf_counter() - start)


def setup_metrics(app: FastAPI) -> CollectorRegistry:
    """HTTP metrics by route and status, and the service collector, at GET /metrics (one registry per app)."""
    registry = CollectorRegistry()
    registry.register(ServiceCollector(lambda: app.state.redis))
    app.add_middleware(HTTPMetrics, registry=registry)

    @app.get("/metrics", tags=["system"], response_class=PlainTextResponse, summary="Prometheus metrics (text format)")
    def metrics() -> PlainTextResponse:
        """The gateway's and the service's metrics (a thread: the service collector reads Redis)."""
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return registry
