"""Batching queued jobs in a live worker: one sampling run, each job its own images, progress and cancel."""

from __future__ import annotations

import io
import signal
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from tests.integration.stack import Stack, wait_until

LONG = {"num_images": 1, "steps": 1000}  # full DDPM on the tiny model: seconds


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    live = Stack(tmp_path_factory.mktemp("batching"), batch_max_images=16)
    try:  # a start that fails half-way still stops what it started
        yield live.start()
    finally:
        live.close()


def meta(stack: Stack, job_id: str) -> dict[str, Any]:
    return Job.fetch(job_id, connection=stack.redis, serializer=JSONSerializer).meta


def pngs(stack: Stack, status: dict[str, Any]) -> list[bytes]:
    return [stack.client.get(url).content for url in status["results"]["images"]]


def assert_same_images_up_to_rounding(batched: list[bytes], alone: list[bytes]) -> None:
    """The images of a batched run against the same job's unbatched run.

    Not byte for byte: a batch feeds the network tensors of another shape (N rows instead of n), for which
    oneDNN (cuDNN on a GPU) may pick other kernels and sum in another order, so floats differ in their last
    bits and a value on a rounding boundary can land one uint8 level away (README, "Batching": measured
    with the shipped UNet, at most 1 level on at most 2 of 49,152 values). Another seed, another label or
    a mixed-up order moves most values by many levels and fails here.
    """
    assert len(batched) == len(alone)
    for got, expected in zip(batched, alone, strict=True):
        a, b = (np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16) for png in (got, expected))
        assert a.shape == b.shape
        diff = np.abs(a - b)
        assert diff.max() <= 1 and (diff > 0).mean() <= 0.01, (int(diff.max()), float((diff > 0).mean()))


def hold_worker(stack: Stack, model: str = "diffusion") -> str:
    """Occupy the only worker of `model` so that what is submitted next waits in the queue."""
    blocker = stack.submit(model, **(LONG if model == "diffusion" else {"num_images": 1, "steps": 2000}))
    stack.wait_for(blocker["job_id"], ("started",), timeout=60)
    return blocker["job_id"]


def release(stack: Stack, blocker: str) -> None:
    assert stack.client.delete(f"/jobs/{blocker}").status_code == 200
    stack.wait_for(blocker, ("canceled",), timeout=60)


def test_compatible_queued_jobs_share_one_run_and_get_the_images_of_unbatched_runs(stack: Stack) -> None:
    blocker = hold_worker(stack)
    requests = [
        {"num_images": 1, "steps": 20, "class_label": "cat", "seed": 11},
        {"num_images": 2, "steps": 20, "class_label": "ship", "seed": 12, "previews": 2},
        {"num_images": 1, "steps": 20, "class_label": 3, "seed": 13, "guidance_scale": 1.0},
    ]
    other_steps = stack.submit("diffusion", num_images=1, steps=21, class_label="cat", seed=11)
    batched = [stack.submit("diffusion", **body) for body in requests]
    unconditional = stack.submit("diffusion", num_images=1, steps=20, seed=11)
    release(stack, blocker)

    statuses = [stack.wait_for(job["job_id"], timeout=120) for job in batched]
    assert [meta(stack, job["job_id"])["batch_size"] for job in batched] == [3, 3, 3]
    assert {s["worker"] for s in statuses} == {statuses[0]["worker"]}
    for status, body in zip(statuses, requests, strict=True):
        assert status["progress"] == {"step": 20, "total": 20, "fraction": 1.0}  # each job its own progress
        assert len(status["results"]["images"]) == body["num_images"]
    # Trajectory frames only for the job that asked, of its own two images (a 2-wide grid, 2 + 2 * 34 px).
    assert [len(s["previews"]) for s in statuses] == [0, 2, 0]
    frame = Image.open(io.BytesIO(stack.client.get(statuses[1]["previews"][-1]["url"]).content))
    assert frame.size == (2 + 2 * 34, 2 + 34)
    for job in (other_steps, unconditional):  # other step count / no class label: not compatible, run alone
        stack.wait_for(job["job_id"], timeout=120)
        assert meta(stack, job["job_id"])["batch_size"] == 1

    # The same requests, one at a time on the idle worker: the same images, up to rounding.
    for status, body in zip(statuses, requests, strict=True):
        alone = stack.wait_for(stack.submit("diffusion", **body)["job_id"], timeout=60)
        assert meta(stack, alone["job_id"])["batch_size"] == 1
        assert_same_images_up_to_rounding(pngs(stack, status), pngs(stack, alone))


def test_ebm_jobs_batch_too_with_unchanged_images(stack: Stack) -> None:
    blocker = hold_worker(stack, "ebm")
    requests = [{"num_images": 1, "class_label": "frog", "seed": 5}, {"num_images": 3, "class_label": "dog", "seed": 9}]
    batched = [stack.submit("ebm", **body) for body in requests]
    release(stack, blocker)
    statuses = [stack.wait_for(job["job_id"], timeout=60) for job in batched]
    assert [meta(stack, job["job_id"])["batch_size"] for job in batched] == [2, 2]
    for status, body in zip(statuses, requests, strict=True):
        alone = stack.wait_for(stack.submit("ebm", **body)["job_id"], timeout=60)
        assert_same_images_up_to_rounding(pngs(stack, status), pngs(stack, alone))


def test_canceling_one_job_of_a_batch_leaves_the_others_running(stack: Stack) -> None:
    blocker = hold_worker(stack)
    # 13 images x 1000 steps: the run outlasts the heartbeat TTL (5 s) after the cancel, so the canceled job must
    # keep its heartbeat, or it would be taken for abandoned and run again.
    jobs = [stack.submit("diffusion", steps=1000, num_images=n, seed=k) for k, n in enumerate((6, 1, 6))]
    release(stack, blocker)
    wait_until(lambda: all(stack.status(j["job_id"])["status"] == "started" for j in jobs), 60, "one batch of 3")
    victim = jobs[1]["job_id"]
    wait_until(lambda: (stack.status(victim)["progress"] or {}).get("step", 0) > 5, 90, "some steps")
    assert stack.client.delete(f"/jobs/{victim}").json()["status"] == "canceling"

    canceled = stack.wait_for(victim, ("canceled",), timeout=90)
    assert canceled["progress"]["step"] < 1000
    # Canceled at once, while its batch runs on for the others; and not taken for abandoned (heartbeat TTL 5 s)
    # meanwhile: RQ keeps it started (polls of the running jobs make the gateway look for abandoned jobs).
    assert {stack.status(job["job_id"])["status"] for job in (jobs[0], jobs[2])} == {"started"}
    deadline = time.monotonic() + 7
    while time.monotonic() < deadline and stack.status(jobs[0]["job_id"])["status"] == "started":
        status = Job.fetch(victim, connection=stack.redis, serializer=JSONSerializer).get_status()
        assert status in (JobStatus.STARTED, JobStatus.FINISHED), status
        time.sleep(0.2)
    for job in (jobs[0], jobs[2]):
        finished = stack.wait_for(job["job_id"], timeout=180)
        assert finished["progress"]["step"] == 1000 and len(finished["results"]["images"]) == 6
        assert meta(stack, job["job_id"])["batch_size"] == 3
    assert stack.client.get(f"/jobs/{victim}/grid.png").status_code == 409
    after = stack.status(victim)
    assert after["status"] == "canceled" and after["attempts"] == 1  # never retried
    assert meta(stack, victim)["canceled"] is True
    # Not taken for abandoned while its batch ran: no retry used up (the gateway gives each job 2).
    assert Job.fetch(victim, connection=stack.redis, serializer=JSONSerializer).retries_left == 2


def test_a_batch_whose_worker_is_killed_is_retried_whole(stack: Stack) -> None:
    blocker = hold_worker(stack)
    jobs = [stack.submit("diffusion", **LONG, seed=20 + k) for k in range(3)]
    release(stack, blocker)
    wait_until(lambda: all(stack.status(j["job_id"])["status"] == "started" for j in jobs), 60, "one batch of 3")
    stack.kill("diffusion-worker", signal.SIGKILL)
    stack.start_worker("diffusion", "diffusion-worker")
    for job in jobs:  # each found abandoned (heartbeat TTL 5 s) and retried on the new worker
        finished = stack.wait_for(job["job_id"], timeout=180)
        assert finished["attempts"] == 2 and len(finished["results"]["images"]) == 1
