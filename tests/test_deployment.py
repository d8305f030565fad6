"""The deployment files parse and agree with the code: compose services, GPU reservations, Dockerfile, CI."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_redis_with_persistence_and_a_healthcheck() -> None:
    redis = compose()["services"]["redis"]
    assert "--appendonly" in redis["command"]
    assert redis["healthcheck"]["test"][-1] == "ping"


def test_gpu_services_reserve_an_nvidia_device_and_run_real_modules() -> None:
    services = compose()["services"]
    for name in ("train_diffusion", "sample_diffusion", "train_ebm", "sample_ebm"):
        service = services[name]
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
        module = service["entrypoint"][service["entrypoint"].index("-m") + 1]
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), module


def test_dockerfile_copies_every_package() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\w+) ", dockerfile, flags=re.MULTILINE))
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name != "tests"}
    assert packages <= copied, packages - copied


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
