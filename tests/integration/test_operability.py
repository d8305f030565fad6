"""Metrics and logs of the live stack: what an operator scrapes and reads."""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.stack import Stack, wait_until


def scrape(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = stack.client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_parse_and_move_when_a_job_runs(stack: Stack) -> None:
    before = scrape(stack)
    assert value(before, "genservice_redis_up") == 1.0
    job = stack.submit("diffusion", num_images=3, steps=20, seed=5)
    stack.wait_for(job["job_id"])
    after = scrape(stack)

    assert value(after, "genservice_job_run_seconds_count", model="diffusion") == (
        value(before, "genservice_job_run_seconds_count", model="diffusion") + 1
    )
    assert value(after, "genservice_job_wait_seconds_count", model="diffusion") >= 1
    assert value(after, "genservice_images_generated_total", model="diffusion") == (
        value(before, "genservice_images_generated_total", model="diffusion") + 3
    )
    assert value(after, "genservice_queue_jobs", queue="diffusion", state="finished") >= 1
    accepted = value(after, "http_requests_total", handler="/generate/diffusion", method="POST", status="2xx")
    assert accepted >= 1
    polls = [
        k for k in after if k[0] == "http_request_duration_seconds_count" and ("handler", "/jobs/{job_id}") in k[1]
    ]
    assert polls  # latency histogram by route template, not by job id
    workers = {dict(labels)["worker"] for name, labels in after if name == "genservice_worker_images_total"}
    assert workers and any(value(after, "genservice_worker_images_total", **dict(k[1])) >= 3
                           for k in after if k[0] == "genservice_worker_images_total")  # fmt: skip


def test_queue_depth_is_visible_while_jobs_wait(stack: Stack) -> None:
    running = stack.submit("diffusion", num_images=1, steps=1000)
    waiting = [stack.submit("diffusion", num_images=1, steps=5) for _ in range(3)]
    stack.wait_for(running["job_id"], ("started",))
    depth = value(scrape(stack), "genservice_queue_jobs", queue="diffusion", state="queued")
    assert depth >= 2
    busy = [k for k in scrape(stack) if k[0] == "genservice_worker_busy" and ("job_id", running["job_id"]) in k[1]]
    assert busy  # the worker reports which job it runs
    for job in [running, *waiting]:
        stack.client.delete(f"/jobs/{job['job_id']}")


def test_job_log_lines_are_json_with_the_job_id(stack: Stack) -> None:
    job = stack.submit("ebm", num_images=1, seed=2)
    stack.wait_for(job["job_id"])

    def job_lines() -> list[dict]:
        lines = []
        for line in (stack.workdir / "ebm-worker.log").read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("job_id") == job["job_id"]:
                lines.append(entry)
        return lines

    lines = wait_until(job_lines, 10, "the job's log lines")
    assert all(entry["model"] == "ebm" and entry["worker"].startswith("ebm-") for entry in lines)
    assert any("images in" in entry["message"] for entry in lines)
