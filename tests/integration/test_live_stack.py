"""The whole service over real HTTP: uvicorn gateway, RQ worker processes, a real Redis."""

from __future__ import annotations

import io
import signal

from PIL import Image

from tests.integration.stack import Stack, wait_until

LONG = {"num_images": 1, "steps": 1000}  # full DDPM on the tiny model: seconds, long enough to watch


def download(stack: Stack, url: str) -> bytes:
    response = stack.client.get(url)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    return response.content


def test_diffusion_job_end_to_end_and_reproducible(stack: Stack) -> None:
    runs = []
    for _ in range(2):
        accepted = stack.submit("diffusion", num_images=2, steps=10, class_label="cat", seed=7)
        status = stack.wait_for(accepted["job_id"])
        assert status["parameters"]["seed"] == 7 and status["attempts"] == 1
        assert status["progress"] == {"step": 10, "total": 10, "fraction": 1.0}
        pngs = [download(stack, url) for url in status["results"]["images"]]
        for png in pngs:
            image = Image.open(io.BytesIO(png))
            assert image.size == (32, 32) and image.mode == "RGB"
        grid = Image.open(io.BytesIO(download(stack, status["results"]["grid"])))
        assert grid.size == (2 + 2 * 34, 2 + 34)
        runs.append(pngs)
    assert runs[0] == runs[1]  # same seed, same bytes
    assert runs[0][0] != runs[0][1]  # image 1 uses seed + 1
    # the worker says which engine and precision it picked for this machine, and why
    (worker,) = stack.client.get("/models/info").json()["models"]["diffusion"][:1]
    chosen = worker["runtime"]
    assert chosen["runtime"] in ("torch", "openvino") and chosen["precision"] in ("fp32", "bf16")
    assert chosen["engine"].startswith(chosen["runtime"]) and chosen["why"]
    assert chosen["graph"].startswith("export form" if chosen["runtime"] == "openvino" else "the UNet")


def test_ebm_job_end_to_end_and_reproducible(stack: Stack) -> None:
    first = stack.wait_for(stack.submit("ebm", num_images=2, class_label="ship")["job_id"])
    seed = first["parameters"]["seed"]  # chosen by the gateway, recorded
    again = stack.wait_for(stack.submit("ebm", num_images=2, class_label="ship", seed=seed)["job_id"])
    assert first["progress"]["total"] == 20  # the model card's Langevin steps
    assert download(stack, first["results"]["images"][1]) == download(stack, again["results"]["images"][1])


def test_jobs_with_previews_expose_their_trajectory(stack: Stack) -> None:
    for model, body, steps, size in (
        ("diffusion", {"num_images": 2, "steps": 20, "previews": 4}, [5, 10, 15, 20], (70, 36)),  # x_0 predictions
        ("ebm", {"num_images": 3, "previews": 3}, [7, 14, 20], (70, 70)),  # chain states; the card's 20 steps
    ):
        status = stack.wait_for(stack.submit(model, **body)["job_id"])
        assert [p["step"] for p in status["previews"]] == steps, model
        grids = [Image.open(io.BytesIO(download(stack, p["url"]))) for p in status["previews"]]
        assert {grid.size for grid in grids} == {size}, model  # a grid of the job's images, 2 per row
    plain = stack.wait_for(stack.submit("diffusion", num_images=1, steps=5)["job_id"])
    assert plain["previews"] == []
    assert stack.client.get(f"/jobs/{plain['job_id']}/previews/0.png").status_code == 404


def test_progress_moves_and_queue_positions_count_down(stack: Stack) -> None:
    running = stack.submit("diffusion", **LONG)
    queued = [stack.submit("diffusion", num_images=1, steps=5) for _ in range(2)]
    positions = [[stack.status(job["job_id"])["queue_position"]] for job in queued]
    status = stack.wait_for(running["job_id"], ("started",))
    fractions = set()
    while status["status"] == "started":
        if status["progress"]:
            fractions.add(status["progress"]["fraction"])
        for job, seen in zip(queued, positions, strict=True):
            seen.append(stack.status(job["job_id"])["queue_position"])
        status = stack.status(running["job_id"])
    assert status["status"] == "finished"
    assert len([f for f in fractions if 0 < f < 1]) >= 2  # progress was visible while it ran
    assert positions[0][0] == 0 and positions[1][0] == 1  # second in line behind the first
    for job in queued:
        stack.wait_for(job["job_id"])


def test_cancel_a_queued_and_a_running_job(stack: Stack) -> None:
    running = stack.submit("diffusion", **LONG)
    queued = stack.submit("diffusion", **LONG)
    stack.wait_for(running["job_id"], ("started",), timeout=120)
    response = stack.client.delete(f"/jobs/{queued['job_id']}")
    assert response.status_code == 200 and response.json()["status"] == "canceled"
    wait_until(lambda: (stack.status(running["job_id"])["progress"] or {}).get("step", 0) > 5, 90, "some steps")
    assert stack.client.delete(f"/jobs/{running['job_id']}").json()["status"] == "canceling"

    stopped = stack.wait_for(running["job_id"], ("canceled",), timeout=90)
    assert stopped["progress"]["step"] < 1000
    never_ran = stack.status(queued["job_id"])
    assert never_ran["status"] == "canceled" and never_ran["started_at"] is None
    assert stack.client.delete(f"/jobs/{running['job_id']}").status_code == 409
    assert stack.client.get(f"/jobs/{running['job_id']}/grid.png").status_code == 409


def test_two_workers_share_the_queue_and_a_killed_workers_job_is_retried(stack: Stack) -> None:
    stack.start_worker("diffusion", "diffusion-worker-2")
    wait_until(lambda: stack.workers("diffusion") >= 2, 60, "a second diffusion worker")
    jobs = [stack.submit("diffusion", num_images=1, steps=200) for _ in range(6)]
    ran_on = {stack.wait_for(job["job_id"], timeout=120)["worker"] for job in jobs}
    assert len(ran_on) == 2  # both replicas took work

    victim_job = stack.submit("diffusion", **LONG)
    started = stack.wait_for(victim_job["job_id"], ("started",))
    # Kill the process of the worker the job reports (workers publish their pid in /models/info).
    names = {name: proc for name, proc in stack.processes.items() if name.startswith("diffusion-worker")}
    info = stack.client.get("/models/info").json()["models"]["diffusion"]
    pid_of = {entry["worker"]: entry.get("pid") for entry in info}
    victim = next(name for name, proc in names.items() if proc.pid == pid_of[started["worker"]])
    stack.kill(victim, signal.SIGKILL)

    finished = stack.wait_for(victim_job["job_id"], timeout=120)
    assert finished["attempts"] == 2 and finished["worker"] != started["worker"]


def test_sigterm_lets_the_running_job_finish(stack: Stack) -> None:
    proc = stack.start_worker("ebm", "ebm-worker-2")
    wait_until(lambda: stack.workers("ebm") >= 2, 60, "a second EBM worker")
    stack.kill("ebm-worker")  # leave only the new one
    job = stack.submit("ebm", num_images=4, steps=600)
    stack.wait_for(job["job_id"], ("started",))
    proc.send_signal(signal.SIGTERM)  # warm shutdown: finish the job, then exit
    assert stack.wait_for(job["job_id"], timeout=120)["status"] == "finished"
    assert proc.wait(timeout=30) == 0
    stack.processes.pop("ebm-worker-2")


def test_bad_requests_get_clear_errors_never_500(stack: Stack) -> None:
    bad = stack.client.post("/generate/diffusion", json={"num_images": 0, "steps": 5000, "class_label": "unicorn"})
    assert bad.status_code == 422
    fields = {error["loc"][-1] for error in bad.json()["detail"]}
    assert fields == {"num_images", "steps", "class_label"}
    assert stack.client.get("/jobs/00000000-0000-4000-8000-000000000000").status_code == 404
    assert stack.client.delete("/jobs/not-a-uuid").status_code == 404
    legacy = stack.client.post("/generate", json={"start_word": "the", "length": 5})
    assert legacy.status_code == 503 and "text service" in legacy.json()["detail"]


def test_a_job_that_cannot_run_fails_once_with_its_reason(stack: Stack) -> None:
    """Bad parameters past the gateway (here: enqueued straight into RQ) fail at once: retries are for dead workers."""
    from redis import Redis

    from gateway.jobs import JobStore
    from shared.service.settings import QueueSettings

    store = JobStore(Redis.from_url(stack.redis_url), QueueSettings(redis_url=stack.redis_url))
    job = store.submit("diffusion", {"num_images": 1, "steps": 5, "sampler": "ddpm", "seed": 1})
    status = stack.wait_for(job.id, ("failed",), timeout=60)
    assert status["attempts"] == 1
    assert "ddim" in status["error"] and status["error"].startswith("ValueError")


def test_legacy_text_routes_through_the_gateway(stack: Stack) -> None:
    import httpx

    text_url = stack.env["GENSERVICE_TEXT_SERVICE_URL"]
    port = text_url.rsplit(":", 1)[1]
    stack.spawn("text", "-m", "text_service", env={"TEXT_PORT": port, "TEXT_HOST": "127.0.0.1"})

    def text_up() -> bool:
        try:
            return httpx.get(f"{text_url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(text_up, 90, "the text service")
    generated = stack.client.post("/generate", json={"start_word": "the", "length": 5, "seed": 3})
    assert generated.status_code == 200 and generated.json()["generated_text"].lower().startswith("the")
    assert generated.json() == stack.client.post("/generate", json={"start_word": "the", "length": 5, "seed": 3}).json()
    rnn = stack.client.post("/generate_with_rnn", json={"start_word": "the", "length": 5, "temperature": 0.8})
    assert rnn.status_code == 200
    embedded = stack.client.post("/embed", json={"word": "prison"}).json()
    assert embedded["dim"] == len(embedded["embedding"]) == 384
    unknown = stack.client.post("/generate", json={"start_word": "qwxzzy", "length": 5})
    assert unknown.status_code == 422 and "qwxzzy" in unknown.text  # the text service's own answer, passed through
    stack.kill("text", signal.SIGTERM)
