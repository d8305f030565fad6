"""The live stack for integration tests: a real Redis, real worker processes, a real uvicorn gateway."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import torch
from redis import Redis

from shared.diffusion.pipeline import DiffusionPipeline
from shared.diffusion.process import GaussianDiffusion
from shared.diffusion.unet import UNet, UNetConfig
from shared.ebm.energy import EnergyConfig, EnergyNet
from shared.ebm.langevin import LangevinParams
from shared.ebm.pipeline import EBMPipeline

ROOT = Path(__file__).resolve().parents[2]
CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"gave up after {timeout} s waiting for {what}")


def save_tiny_models(directory: Path) -> tuple[Path, Path]:
    """Untrained 32x32 CIFAR-shaped models: real networks, real weights files, milliseconds per step.

    The UNet's weights are seeded random draws (as `tests.conftest.seeded_unet`): a fresh UNet's zeroed
    output layer predicts eps = 0 for any input, so its images would not depend on the network or on the
    class label at all, and a test could not tell one job's images from another's label.
    """
    torch.manual_seed(0)
    unet = UNet(UNetConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_heads=2, num_groups=4,
                           class_names=CIFAR10))  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=gen) * 0.1)
    DiffusionPipeline(unet, GaussianDiffusion()).save_pretrained(directory / "diffusion", training={"note": "test"})
    net = EnergyNet(EnergyConfig(base_channels=8, channel_mult=(1, 2), class_names=CIFAR10))
    EBMPipeline(net).save_pretrained(directory / "ebm", sampling=LangevinParams(steps=20))
    return directory / "diffusion", directory / "ebm"


class Stack:
    """Processes of one test stack; everything is stopped by close()."""

    def __init__(self, workdir: Path, heartbeat_ttl: int = 5, batch_max_images: int = 1) -> None:
        self.workdir = workdir
        self.redis_port, self.gateway_port = free_port(), free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        diffusion, ebm = save_tiny_models(workdir / "models")
        self.env = {
            **os.environ,
            "REDIS_URL": self.redis_url,
            "GENSERVICE_DIFFUSION_WEIGHTS": str(diffusion),
            "GENSERVICE_EBM_WEIGHTS": str(ebm),
            "GENSERVICE_HEARTBEAT_TTL": str(heartbeat_ttl),
            # Queue semantics (positions, one job at a time) are tested unbatched; tests/integration/test_batching.py
            # runs a stack with batching on.
            "GENSERVICE_BATCH_MAX_IMAGES": str(batch_max_images),
            "GENSERVICE_PORT": str(self.gateway_port),
            "GENSERVICE_TEXT_SERVICE_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens there
            "OMP_NUM_THREADS": "1",
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        # every process ever spawned, so close() reaps one whose name was reused or whose kill() timed out
        self.spawned: list[subprocess.Popen[bytes]] = []
        self.url = f"http://127.0.0.1:{self.gateway_port}"

    def spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        if name in self.processes and self.processes[name].poll() is None:
            raise ValueError(f"a process named {name!r} is still running")
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env={**self.env, **(env or {})}, stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip
        self.processes[name] = proc
        self.spawned.append(proc)
        return proc

    def start(self) -> Stack:
        self.spawn("redis", "-m", "shared.service.redis_server", "--port", str(self.redis_port),
                   "--dir", str(self.workdir / "redis"), "--no-appendonly")  # fmt: skip
        self.redis = Redis.from_url(self.redis_url)
        wait_until(self._redis_up, 20, "Redis")
        self.spawn("gateway", "-m", "gateway")
        self.start_worker("diffusion")
        self.start_worker("ebm")
        self.client = httpx.Client(base_url=self.url, timeout=10)
        wait_until(self._ready, 90, "the gateway and one worker per queue")
        return self

    def start_worker(self, model: str, name: str | None = None) -> subprocess.Popen[bytes]:
        return self.spawn(name or f"{model}-worker", "-m", f"{model}_worker")

    def _redis_up(self) -> bool:
        try:
            return bool(self.redis.ping())
        except Exception:
            return False

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def workers(self, model: str) -> int:
        return self.client.get("/models/info").json()["queues"][model]["workers"]

    def submit(self, model: str, **body: Any) -> dict[str, Any]:
        response = self.client.post(f"/generate/{model}", json=body)
        assert response.status_code == 202, response.text
        return response.json()

    def status(self, job_id: str) -> dict[str, Any]:
        return self.client.get(f"/jobs/{job_id}").json()

    def wait_for(self, job_id: str, states: tuple[str, ...] = ("finished",), timeout: float = 60) -> dict[str, Any]:
        final = ("finished", "failed", "canceled")
        status = wait_until(lambda: (s := self.status(job_id))["status"] in (*states, *final) and s, timeout,
                            f"job {job_id} to reach {states}")  # fmt: skip
        assert status["status"] in states, status
        return status

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.processes.pop(name)
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def close(self) -> None:
        alive = [proc for proc in self.spawned if proc.poll() is None]
        for proc in alive:
            proc.terminate()
        for proc in alive:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:  # stuck in the kernel: reap the others, say which
                    print(f"process {proc.pid} ({proc.args}) survived SIGKILL for 15 s")
        self.processes.clear()
