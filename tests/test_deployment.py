"""The deployment files agree with the code: compose services, settings names, GPU reservations,
healthchecks, Dockerfiles, the Procfile and CI. (No Docker engine runs here, so this is what checks them.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

from gateway.settings import GatewaySettings
from shared.service.settings import WorkerSettings
from text_service.settings import Settings as TextSettings

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("redis", "gateway", "diffusion_worker", "ebm_worker", "text_service")


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def procfile() -> dict[str, str]:
    lines = [line for line in (ROOT / "Procfile").read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split(": ", 1) for line in lines)


def settings_env_names() -> set[str]:
    names = {"REDIS_URL"}
    for cls in (GatewaySettings, WorkerSettings):
        names |= {f"GENSERVICE_{name.upper()}" for name in cls.model_fields}
    names |= {f"TEXT_{name.upper()}" for name in TextSettings.model_fields}
    return names


def module_exists(module: str) -> bool:
    path = ROOT / module.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()


def test_every_service_is_there_with_a_healthcheck() -> None:
    services = compose()["services"]
    for name in SERVICES:
        assert name in services, name
        assert "healthcheck" in services[name], f"{name} has no healthcheck"


def test_only_the_gateway_is_published_and_redis_is_protected() -> None:
    services = compose()["services"]
    published = {name for name, service in services.items() if service.get("ports") and not service.get("profiles")}
    assert published == {"gateway"}
    redis = services["redis"]
    assert "--appendonly" in redis["command"] and "--requirepass" in redis["command"]
    assert "${REDIS_PASSWORD" in services["gateway"]["environment"]["REDIS_URL"]


def test_workers_reserve_a_gpu_scale_and_stop_gracefully() -> None:
    services = compose()["services"]
    for name in ("diffusion_worker", "ebm_worker"):
        worker = services[name]
        device = worker["deploy"]["resources"]["reservations"]["devices"][0]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        assert "container_name" not in worker  # a fixed name would forbid --scale
        assert worker["stop_grace_period"].endswith("m")
        assert worker["depends_on"]["redis"]["condition"] == "service_healthy"


def test_commands_name_real_modules_and_match_the_procfile() -> None:
    services = compose()["services"]
    local = procfile()
    for service, process in (("gateway", "gateway"), ("diffusion_worker", "diffusion"), ("ebm_worker", "ebm"),
                             ("text_service", "text")):  # fmt: skip
        command = services[service]["command"]
        assert command[:2] == ["python", "-m"] and module_exists(command[2]), command
        assert shlex.split(local[process]) == command, f"{service} runs differently in the Procfile"
    for name, service in services.items():
        entry = service.get("entrypoint")
        if entry:
            assert module_exists(entry[entry.index("-m") + 1]), name


def test_environment_names_match_the_settings_fields() -> None:
    known = settings_env_names()
    for name, service in compose()["services"].items():
        command = service.get("command") or service.get("entrypoint") or []
        if command[:2] != ["python", "-m"]:
            continue  # third-party images (redis, rq-dashboard, prometheus) have their own variables
        unknown = set(service.get("environment", {})) - known
        assert not unknown, f"{name} sets {unknown}, which no Settings class reads"


def test_dockerfiles_copy_every_package_and_run_as_non_root() -> None:
    # tests/ and bench/ are run from a checkout, never inside a service image
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name not in ("tests", "bench")}
    for dockerfile in (ROOT / "docker").glob("*.Dockerfile"):
        text = dockerfile.read_text()
        copied = set(re.findall(r"^COPY (\w+) ", text, flags=re.MULTILINE))
        assert packages <= copied, (dockerfile.name, packages - copied)
        assert re.search(r"^USER (?!root)", text, flags=re.MULTILINE), dockerfile.name
    for service in compose()["services"].values():
        build = service.get("build")
        if build:
            assert (ROOT / build["dockerfile"]).is_file()


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (ROOT / "README.md").read_text()
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_monitoring_profile_scrapes_the_gateway_and_shows_the_queue() -> None:
    services = compose()["services"]
    prometheus, dashboard = services["prometheus"], services["rq_dashboard"]
    assert prometheus["profiles"] == dashboard["profiles"] == ["monitoring"]
    config_mount = next(v for v in prometheus["volumes"] if v.endswith("/etc/prometheus/prometheus.yml:ro"))
    config = yaml.safe_load((ROOT / config_mount.split(":")[0]).read_text())
    targets = [t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]]
    gateway_port = services["gateway"]["ports"][0].split(":")[-1]
    assert targets == [f"gateway:{gateway_port}"]
    assert config["scrape_configs"][0]["metrics_path"] == "/metrics"
    assert dashboard["environment"]["RQ_DASHBOARD_REDIS_URL"] == services["gateway"]["environment"]["REDIS_URL"]
