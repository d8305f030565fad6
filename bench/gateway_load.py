"""Item 3: the gateway under load, next to the ceiling of the same operations done directly on Redis.

A real Redis and a real gateway (`python -m gateway`: granian unless configured otherwise) start as processes; the
load generator (`bench.loadgen`) is a third process. No worker runs, so the queue only grows: the
POST phase measures `POST /generate/diffusion` (validate, enqueue with RQ, answer with the queue
position), the GET phase `GET /jobs/{id}` on jobs from the POST phase (queued jobs, as clients poll
them). The gateway's queue cap is lifted for the run so that every POST is accepted, and its access
log is off (GENSERVICE_ACCESS_LOG=false; the other settings are the defaults).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from redis import Redis

from tests.integration.stack import ROOT, Stack, wait_until

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatewayBenchConfig:
    concurrency: int = 16
    server: str = "granian"  # GENSERVICE_SERVER
    workers: int = 1  # GENSERVICE_WORKERS
    seconds: float = 10.0
    targets: tuple[tuple[str, float, float], ...] = (("POST", 500.0, 25.0), ("GET", 1500.0, 25.0))


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def start_gateway(workdir: Path, cfg: GatewayBenchConfig) -> Stack:
    """Redis and one gateway (no workers), with the queue cap lifted."""
    stack = Stack(workdir)
    stack.env["GENSERVICE_SERVER"], stack.env["GENSERVICE_WORKERS"] = cfg.server, str(cfg.workers)
    stack.env["GENSERVICE_MAX_QUEUE_DEPTH"] = str(10**9)
    stack.env["GENSERVICE_ACCESS_LOG"] = "false"  # a JSON line per request: ~a fifth of a poll's CPU
    stack.spawn("redis", "-m", "shared.service.redis_server", "--port", str(stack.redis_port),
                "--dir", str(workdir / "redis"), "--no-appendonly")  # fmt: skip
    stack.redis = Redis.from_url(stack.redis_url)
    wait_until(stack._redis_up, 20, "Redis")
    stack.spawn("gateway", "-m", "gateway")
    wait_until(lambda: _healthy(stack.url), 60, "the gateway")
    return stack


def load(mode: str, stack: Stack, cfg: GatewayBenchConfig, ids_file: Path | None = None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.loadgen", mode, "--url", stack.url, "--redis", stack.redis_url,
           "--concurrency", str(cfg.concurrency), "--seconds", str(cfg.seconds)]  # fmt: skip
    if ids_file is not None:
        cmd += ["--ids", str(ids_file)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True, timeout=cfg.seconds + 120)
    result = json.loads(done.stdout)
    logger.info("%s: %.0f req/s, p50 %s ms, p99 %s ms", mode, result["req_per_s"], result["p50_ms"], result["p99_ms"])
    return result


def run_gateway_bench(cfg: GatewayBenchConfig) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        workdir = Path(tmp)
        stack = start_gateway(workdir, cfg)
        try:
            results = {"POST /generate/diffusion": load("http-post", stack, cfg)}
            ids_file = workdir / "ids.txt"
            ids_file.write_text("\n".join(results["POST /generate/diffusion"]["ids"][:200]))
            results["JobStore.submit_with_position (Redis direct)"] = load("redis-post", stack, cfg)
            depth = stack.redis.llen("rq:queue:diffusion")
            results["GET /jobs/{id}"] = load("http-get", stack, cfg, ids_file)
            results["JobStore.fetch + describe (Redis direct)"] = load("redis-get", stack, cfg, ids_file)
        finally:
            stack.close()
    rows = []
    for name, r in results.items():
        direct = "Redis direct" in name
        rows.append({
            "operation": name,
            "client": "1 thread, sequential" if direct else f"separate process, {cfg.concurrency} connections",
            "requests": r["requests"],
            "req/s": r["req_per_s"],
            "p50 ms": r["p50_ms"],
            "p99 ms": r["p99_ms"],
            "max ms": r["max_ms"],
            "statuses": ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items())),
        })  # fmt: skip
    verdicts = []
    for method, rps, p99 in cfg.targets:
        r = next(v for k, v in results.items() if k.startswith(method))
        ok = r["req_per_s"] >= rps and (r["p99_ms"] or 1e9) < p99
        verdicts.append({
            "operation": method, "target": f">= {rps:,.0f} req/s, p99 < {p99:g} ms",
            "measured": f"{r['req_per_s']:,.0f} req/s, p99 {r['p99_ms']:.1f} ms", "met": "yes" if ok else "no",
        })  # fmt: skip
    return {"rows": rows, "verdicts": verdicts, "queue_depth_at_get": depth, "server": cfg.server,
            "workers": cfg.workers}  # fmt: skip
