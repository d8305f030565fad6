"""A real Redis for the gateway's in-process tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from tests.integration.stack import ROOT, free_port, wait_until


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    directory: Path = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.service.redis_server", "--port", str(port), "--dir", str(directory),
         "--no-appendonly"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    wait_until(lambda: _ping(url), 20, "Redis")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def _ping(url: str) -> bool:
    try:
        return bool(Redis.from_url(url).ping())
    except Exception:
        return False
