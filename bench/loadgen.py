"""A load generator, run as its own process: fixed concurrency for a fixed time, latencies out as JSON.

python -m bench.loadgen http-post --url http://127.0.0.1:8000 --concurrency 16 --seconds 10
python -m bench.loadgen http-get  --url ... --ids ids.txt
python -m bench.loadgen redis-post --redis redis://127.0.0.1:6379/0      (the gateway's JobStore, no HTTP)
python -m bench.loadgen redis-get  --redis ... --ids ids.txt

HTTP modes: `concurrency` keep-alive HTTP/1.1 connections on raw asyncio streams, each sending its
next request when the previous answer is in (a closed loop; no HTTP library, so the generator costs
little CPU). Redis modes: the same operations the gateway performs (the queue length and
`JobStore.submit_with_position`, and `JobStore.fetch_with_lookups` + `describe`), called directly from one
thread: the ceiling those Redis round trips allow one Python process without HTTP, FastAPI or pydantic in
the way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

POST_BODY = json.dumps({"num_images": 1, "steps": 50, "seed": 1}).encode()


def summary(latencies: list[float], statuses: Counter[str], seconds: float, ids: list[str]) -> dict[str, Any]:
    ordered = sorted(latencies)

    def pct(q: float) -> float | None:
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None

    return {
        "requests": len(latencies),
        "seconds": seconds,
        "req_per_s": len(latencies) / seconds if seconds else 0.0,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "mean_ms": 1000 * statistics.fmean(latencies) if latencies else None,
        "max_ms": 1000 * ordered[-1] if ordered else None,
        "statuses": dict(statuses),
        "ids": ids,
    }


# ------------------------------------------------------------------------------------------ HTTP
async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next((int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")), 0)
    return status, await reader.readexactly(length)


async def _client(url: str, requests: list[bytes], deadline: float, out: dict[str, Any], offset: int) -> None:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
    i = offset
    try:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            writer.write(requests[i % len(requests)])
            status, body = await _read_response(reader)
            out["latencies"].append(time.perf_counter() - start)
            out["statuses"][str(status)] += 1
            if status == 202 and len(out["ids"]) < 1000:
                out["ids"].append(json.loads(body)["job_id"])
            i += 1
    finally:
        writer.close()


def http_requests(mode: str, url: str, ids: list[str]) -> list[bytes]:
    host = urlsplit(url).netloc
    if mode == "http-post":
        head = (f"POST /generate/diffusion HTTP/1.1\r\nHost: {host}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(POST_BODY)}\r\n\r\n")  # fmt: skip
        return [head.encode() + POST_BODY]
    return [f"GET /jobs/{job_id} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode() for job_id in ids]


async def run_http(mode: str, url: str, concurrency: int, seconds: float, ids: list[str]) -> dict[str, Any]:
    requests = http_requests(mode, url, ids)
    out: dict[str, Any] = {"latencies": [], "statuses": Counter(), "ids": []}
    start = time.perf_counter()
    clients = [_client(url, requests, start + seconds, out, k * 7919) for k in range(concurrency)]
    await asyncio.gather(*clients)
    return summary(out["latencies"], out["statuses"], time.perf_counter() - start, out["ids"])


# ----------------------------------------------------------------------------------------- Redis
def run_redis(mode: str, redis_url: str, seconds: float, ids: list[str]) -> dict[str, Any]:
    from redis import Redis

    from gateway.jobs import JobStore
    from gateway.settings import GatewaySettings

    store = JobStore(Redis.from_url(redis_url), GatewaySettings())
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    new_ids: list[str] = []
    start = time.perf_counter()
    deadline, i = start + seconds, 0
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        if mode == "redis-post":
            _ = store.queue("diffusion").count  # the gateway's capacity check
            job, _ = store.submit_with_position("diffusion", {"num_images": 1, "steps": 50, "seed": 1})
            if len(new_ids) < 1000:
                new_ids.append(job.id)
        else:
            found = store.fetch_with_lookups(ids[i % len(ids)])  # as GET /jobs/{id} fetches
            assert found is not None
            store.describe(found[0], "http://bench/", found[1])
        latencies.append(time.perf_counter() - t0)
        statuses["ok"] += 1
        i += 1
    return summary(latencies, statuses, time.perf_counter() - start, new_ids)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["http-post", "http-get", "redis-post", "redis-get"])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--ids", type=Path, help="job ids to GET, one a line")
    args = p.parse_args(argv)
    ids = args.ids.read_text().split() if args.ids else []
    if args.mode.endswith("get") and not ids:
        p.error("GET modes need --ids")
    if args.mode.startswith("http"):
        result = asyncio.run(run_http(args.mode, args.url, args.concurrency, args.seconds, ids))
    else:
        result = run_redis(args.mode, args.redis, args.seconds, ids)
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
