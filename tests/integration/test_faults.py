"""Faults with real processes: Redis restarting under queued jobs, a hung Redis, workers with broken weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from redis import Redis

from tests.integration.stack import ROOT, Stack, wait_until


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_worker_with_broken_weights_refuses_to_start(tmp_path: Path, damage: str) -> None:
    stack = Stack(tmp_path)  # only for its tiny weights and environment; nothing is started
    weights = Path(stack.env["GENSERVICE_DIFFUSION_WEIGHTS"])
    if damage == "missing":
        (weights / "model.safetensors").unlink()
    else:
        (weights / "model.safetensors").write_bytes(b"\x00" * 100)
    result = subprocess.run([sys.executable, "-m", "diffusion_worker"], cwd=ROOT, env=stack.env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2
    assert "cannot start" in result.stderr and "model.safetensors" in result.stderr


def test_queued_jobs_survive_a_redis_restart_and_the_gateway_answers_503_meanwhile(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    try:
        stack.start()
        stack.kill("diffusion-worker")  # nothing consumes: the jobs stay queued
        jobs = [stack.submit("diffusion", num_images=1, steps=5, seed=k) for k in range(3)]
        stack.redis.config_set("appendonly", "yes")  # as in production (the test stack starts without AOF)
        wait_until(lambda: stack.redis.info("persistence")["aof_rewrite_in_progress"] == 0, 20, "the AOF rewrite")
        stack.kill("redis", 15)  # SIGTERM: Redis flushes its append-only file and exits

        down = stack.client.post("/generate/diffusion", json={"steps": 5})
        assert down.status_code == 503 and "Redis" in down.json()["detail"]
        assert stack.client.get("/health").status_code == 200

        stack.spawn("redis", "-m", "shared.service.redis_server", "--port", str(stack.redis_port),
                    "--dir", str(stack.workdir / "redis"))  # fmt: skip
        wait_until(stack._redis_up, 20, "Redis back")
        stack.start_worker("diffusion")
        for job in jobs:  # the gateway reconnects by itself; every accepted job completes
            assert stack.wait_for(job["job_id"], timeout=90)["status"] == "finished"
    finally:
        stack.close()


def _timed(method: str, url: str, **kwargs: object) -> tuple[int, float]:
    start = time.monotonic()
    answer = httpx.request(method, url, timeout=30, **kwargs)  # type: ignore[arg-type]
    return answer.status_code, time.monotonic() - start


def test_a_hung_redis_turns_into_quick_503s_and_never_blocks_the_event_loop(tmp_path: Path) -> None:
    """Redis stopped with SIGSTOP accepts connections and answers nothing: polls (async client) and submits
    (threads) answer 503 after GENSERVICE_REDIS_TIMEOUT, and /health answers meanwhile."""
    stack = Stack(tmp_path)
    stack.env["GENSERVICE_REDIS_TIMEOUT"] = "1"
    try:
        redis = stack.spawn("redis", "-m", "shared.service.redis_server", "--port", str(stack.redis_port),
                            "--dir", str(tmp_path / "redis"), "--no-appendonly")  # fmt: skip
        stack.redis = Redis.from_url(stack.redis_url)
        wait_until(stack._redis_up, 20, "Redis")
        stack.spawn("gateway", "-m", "gateway")
        wait_until(lambda: _up(stack.url), 60, "the gateway")
        job_id = httpx.post(f"{stack.url}/generate/diffusion", json={"steps": 5}).json()["job_id"]
        assert httpx.get(f"{stack.url}/jobs/{job_id}").status_code == 200
        os.kill(redis.pid, signal.SIGSTOP)
        try:
            with ThreadPoolExecutor(16) as pool:  # more requests than the gateway has threads
                polls = [pool.submit(_timed, "GET", f"{stack.url}/jobs/{job_id}") for _ in range(8)]
                posts = [pool.submit(_timed, "POST", f"{stack.url}/generate/diffusion", json={"steps": 5})
                         for _ in range(4)]  # fmt: skip
                time.sleep(0.3)
                health = _timed("GET", f"{stack.url}/health")
                answers = [f.result() for f in polls + posts]
            assert health[0] == 200 and health[1] < 0.5, health
            assert {code for code, _ in answers} == {503}, answers
            assert max(seconds for _, seconds in answers) < 4, answers  # 1 s timeout, up to 4 threads' worth queued
        finally:
            os.kill(redis.pid, signal.SIGCONT)
        assert httpx.get(f"{stack.url}/jobs/{job_id}").status_code == 200  # the clients reconnect by themselves
    finally:
        stack.close()


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_ready_reports_a_missing_worker(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    try:
        stack.start()
        stack.kill("ebm-worker")
        stack.redis.delete(*stack.redis.keys("rq:worker:ebm-*"))  # what the worker's key expiry does later
        ready = httpx.get(f"{stack.url}/ready", timeout=5)
        assert ready.status_code == 503 and ready.json()["workers"]["ebm"] == 0
    finally:
        stack.close()


def test_ten_sigkills_lose_no_job(tmp_path: Path) -> None:
    """Two diffusion replicas; ten times, SIGKILL whichever runs a job and start a fresh one."""
    stack = Stack(tmp_path)  # heartbeat TTL 5 s: a dead worker's job is found quickly
    try:
        stack.start()
        stack.start_worker("diffusion", "diffusion-worker-0")
        jobs = [stack.submit("diffusion", num_images=1, steps=300, seed=k)["job_id"] for k in range(12)]
        kills = 0
        while kills < 10:
            running = [s for s in (stack.status(j) for j in jobs) if s["status"] == "started" and s["worker"]]
            if not running:
                if all(stack.status(j)["status"] in ("finished", "failed", "canceled") for j in jobs):
                    break  # everything ended before ten kills
                continue
            pid_of = {e["worker"]: e["pid"] for e in stack.client.get("/models/info").json()["models"]["diffusion"]}
            pid = pid_of.get(running[0]["worker"])
            victim = next((n for n, p in stack.processes.items() if p.pid == pid and n.startswith("diffusion")), None)
            if victim is None:
                continue
            stack.kill(victim)
            kills += 1
            stack.start_worker("diffusion", f"diffusion-worker-k{kills}")
        final = [stack.wait_for(j, ("finished", "failed"), timeout=240) for j in jobs]
        finished = [s for s in final if s["status"] == "finished"]
        failed = [s for s in final if s["status"] == "failed"]
        assert kills >= 5
        assert len(finished) + len(failed) == len(jobs)  # every accepted job ended: none lost, none stuck
        assert all(s["attempts"] <= 3 for s in final)  # bounded: 1 + GENSERVICE_MAX_RETRIES
        assert any(s["attempts"] > 1 for s in finished)  # killed jobs were retried and finished
        assert all("Abandoned" in (s["error"] or "") for s in failed)  # a clear reason for the unlucky ones
        print(f"accepted {len(jobs)}, finished {len(finished)}, failed {len(failed)}, lost 0, kills {kills}")
    finally:
        stack.close()
