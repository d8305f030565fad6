"""The gateway in-process (FastAPI's TestClient) against a real Redis: validation, errors, OpenAPI."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis

from gateway.app import create_app
from gateway.deps import get_text_client
from gateway.settings import GatewaySettings
from tests.integration.stack import ROOT, free_port


@pytest.fixture(scope="module")
def client(redis_url: str) -> Iterator[TestClient]:
    settings = GatewaySettings(redis_url=redis_url, text_service_url=f"http://127.0.0.1:{free_port()}")
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_accepted_job_has_location_seed_and_queue_position(client: TestClient) -> None:
    response = client.post("/generate/diffusion", json={"num_images": 2, "steps": 10})
    assert response.status_code == 202
    body = response.json()
    assert response.headers["location"] == body["status_url"] and body["status"] == "queued"
    assert isinstance(body["queue_position"], int)
    status = client.get(f"/jobs/{body['job_id']}").json()
    assert status["status"] == "queued" and status["results"] is None
    assert 0 <= status["parameters"]["seed"] < 2**31  # chosen by the gateway and recorded
    assert client.get(f"/jobs/{body['job_id']}/grid.png").status_code == 409
    assert client.delete(f"/jobs/{body['job_id']}").json()["status"] == "canceled"
    assert client.get(f"/jobs/{body['job_id']}").json()["status"] == "canceled"


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("diffusion", {"num_images": 65}, "num_images"),
        ("diffusion", {"steps": 0}, "steps"),
        ("diffusion", {"steps": 1001}, "steps"),
        ("diffusion", {"sampler": "euler"}, "sampler"),
        ("diffusion", {"eta": 1.5}, "eta"),
        ("diffusion", {"guidance_scale": -1}, "guidance_scale"),
        ("diffusion", {"guidance_interval": [1.0]}, "guidance_interval"),
        ("diffusion", {"guidance_interval": [1.0, 2.0, 3.0]}, "guidance_interval"),
        ("diffusion", {"guidance_interval": "wide"}, "guidance_interval"),
        ("diffusion", {"guidance_interval": [2.0, 1.0]}, "guidance_interval"),
        ("diffusion", {"guidance_interval": [1.0, 1.0]}, "guidance_interval"),
        ("diffusion", {"guidance_interval": [-0.5, 1.0]}, "guidance_interval"),
        ("diffusion", {"guidance_interval": [0.0, 1e7]}, "guidance_interval"),
        ("diffusion", {"class_label": 10}, "class_label"),
        ("diffusion", {"class_label": "unicorn"}, "class_label"),
        ("diffusion", {"class_label": True}, "class_label"),
        ("diffusion", {"seed": -1}, "seed"),
        ("diffusion", {"colour": "red"}, "colour"),
        ("ebm", {"steps": 0}, "steps"),
        ("ebm", {"step_size": 0}, "step_size"),
        ("ebm", {"noise_scale": 2.5}, "noise_scale"),
        ("ebm", {"guidance_scale": -1}, "guidance_scale"),
        ("ebm", {"guidance_scale": 21}, "guidance_scale"),
        ("ebm", {"num_images": "many"}, "num_images"),
    ],
)
def test_out_of_range_fields_are_422_naming_the_field(client: TestClient, route: str, body: dict, field: str) -> None:
    response = client.post(f"/generate/{route}", json=body)
    assert response.status_code == 422
    assert [error["loc"][-1] for error in response.json()["detail"]] == [field]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.dictionaries(
        st.sampled_from(["num_images", "steps", "eta", "seed", "class_label", "guidance_scale"]),
        st.one_of(st.integers(-10, 2000), st.floats(allow_nan=True), st.text(max_size=5), st.none()),
    )
)
def test_any_body_gets_202_or_422_never_500(client: TestClient, body: dict) -> None:  # fmt: skip
    raw = json.dumps(body)  # NaN and Infinity included, as a careless client would send them
    response = client.post("/generate/diffusion", content=raw, headers={"content-type": "application/json"})
    assert response.status_code in (202, 422)


def test_ddpm_with_fewer_than_1000_steps_is_422(client: TestClient) -> None:
    response = client.post("/generate/diffusion", json={"sampler": "ddpm", "steps": 50})
    assert response.status_code == 422 and "ddim" in response.json()["detail"][0]["msg"]


def test_dpmpp_2m_and_a_guidance_interval_are_accepted_and_recorded(client: TestClient) -> None:
    body = {
        "steps": 20,
        "sampler": "dpmpp_2m",
        "class_label": "cat",
        "guidance_scale": 3,
        "guidance_interval": [0.3, 5],
    }
    accepted = client.post("/generate/diffusion", json=body)
    assert accepted.status_code == 202
    parameters = client.get(f"/jobs/{accepted.json()['job_id']}").json()["parameters"]
    assert parameters["sampler"] == "dpmpp_2m" and parameters["guidance_interval"] == [0.3, 5.0]


def test_guidance_interval_errors_say_what_is_wrong(client: TestClient) -> None:
    response = client.post("/generate/diffusion", json={"guidance_interval": [2, 1]})
    assert response.status_code == 422 and "sigma_lo < sigma_hi" in response.json()["detail"][0]["msg"]
    raw = '{"guidance_interval": [0, Infinity]}'  # what Python's json.dumps writes for inf
    response = client.post("/generate/diffusion", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422 and "finite" in response.json()["detail"][0]["msg"]


def test_dpmpp_2m_with_eta_is_422(client: TestClient) -> None:
    response = client.post("/generate/diffusion", json={"sampler": "dpmpp_2m", "steps": 20, "eta": 0.5})
    assert response.status_code == 422 and "deterministic" in response.json()["detail"][0]["msg"]


def test_unknown_jobs_are_404(client: TestClient) -> None:
    for path in ("/jobs/not-a-uuid", "/jobs/00000000-0000-4000-8000-000000000000/grid.png"):
        assert client.get(path).status_code == 404
    assert client.delete("/jobs/00000000-0000-4000-8000-000000000000").status_code == 404


def test_text_service_down_is_503_but_a_bad_body_is_still_422(client: TestClient) -> None:
    response = client.post("/generate_with_rnn", json={"start_word": "the", "length": 3, "temperature": 1})
    assert response.status_code == 503 and "unavailable" in response.json()["detail"]
    bad = client.post("/generate_with_rnn", json={"start_word": "the", "length": 0, "temperature": 9})
    assert bad.status_code == 422
    assert {error["loc"][-1] for error in bad.json()["detail"]} == {"length", "temperature"}


def test_redis_down_is_503_and_health_stays_up() -> None:
    settings = GatewaySettings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with TestClient(create_app(settings)) as down:
        response = down.post("/generate/diffusion", json={})
        assert response.status_code == 503 and "Redis" in response.json()["detail"]
        assert down.get("/ready").status_code == 503
        assert down.get("/health").json() == {"status": "ok"}


def test_ready_reports_the_text_service_without_depending_on_it(client: TestClient) -> None:
    down = client.get("/ready").json()  # nothing listens at the text service's URL here
    assert down["text_service"]["status"] == "unavailable" and not any(down["text_service"]["routes"].values())
    health = {"status": "degraded", "models": {"bigram": {"loaded": True, "detail": "ok"},
                                               "lstm": {"loaded": False, "detail": "no weights"},
                                               "embeddings": {"loaded": True, "detail": "ok"}}}  # fmt: skip
    mock = httpx.AsyncClient(
        transport=httpx.MockTransport(lambda r: httpx.Response(200, json=health)), base_url="http://t"
    )
    client.app.dependency_overrides[get_text_client] = lambda: mock  # type: ignore[attr-defined]
    try:
        up = client.get("/ready")
    finally:
        client.app.dependency_overrides.pop(get_text_client)  # type: ignore[attr-defined]
    assert up.json()["text_service"] == {
        "status": "degraded", "detail": None,
        "routes": {"/generate": True, "/generate_with_rnn": False, "/embed": True, "/similarity": True},
    }  # fmt: skip
    # the status code is the image side's alone (no worker listens here either way)
    assert up.status_code == client.get("/ready").status_code == 503 and up.json()["redis"] is True


def test_openapi_documents_every_route_with_a_response_model(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/generate/diffusion", "/generate/ebm", "/jobs/{job_id}", "/models/info", "/ready"):
        operation = next(iter(spec["paths"][path].values()))
        ok = next(code for code in operation["responses"] if code.startswith("2"))
        assert "$ref" in str(operation["responses"][ok]), path
    assert {"/generate", "/generate_with_rnn", "/embed", "/similarity"} <= set(spec["paths"])
    embed = spec["paths"]["/embed"]["post"]
    assert "EmbedRequest" in str(embed["requestBody"]) and "EmbedResponse" in str(embed["responses"]["200"])


def test_the_gateway_does_not_import_torch() -> None:
    code = "import sys, gateway.app, gateway.client; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_the_served_app_freezes_its_start_up_objects_out_of_the_collector() -> None:
    # the p99 of item 3 of the benchmarks depends on it: full collections that walk every imported
    # module's objects stall requests for tens of milliseconds
    code = "import gc, gateway.__main__ as m; assert gc.get_freeze_count() == 0; m.app(); print(gc.get_freeze_count())"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) > 50_000


def test_proxy_passes_requests_and_answers_through(client: TestClient) -> None:
    seen: dict[str, object] = {}
    answers = [httpx.Response(422, json={"detail": "unknown start word 'zzz'"}), httpx.Response(500, text="boom")]

    def upstream(request: httpx.Request) -> httpx.Response:
        seen["path"], seen["body"] = request.url.path, request.content
        return answers.pop(0)

    mock = httpx.AsyncClient(transport=httpx.MockTransport(upstream), base_url="http://text")
    client.app.dependency_overrides[get_text_client] = lambda: mock  # type: ignore[attr-defined]
    try:
        response = client.post("/generate", json={"start_word": "zzz", "length": 3})
        undocumented = client.post("/generate", json={"start_word": "zzz", "length": 3})
    finally:
        client.app.dependency_overrides.pop(get_text_client)  # type: ignore[attr-defined]
    assert seen == {"path": "/generate", "body": b'{"start_word":"zzz","length":3}'}
    assert response.status_code == 422 and response.json() == {"detail": "unknown start word 'zzz'"}
    # an answer the schema does not document (a 500, a body that is not JSON) becomes a 502 with a sentence
    assert undocumented.status_code == 502 and "500" in undocumented.json()["detail"]


def test_a_foreign_job_in_the_same_redis_is_described_not_a_500(client: TestClient, redis_url: str) -> None:
    from rq import Queue
    from rq.serializers import JSONSerializer

    job = Queue("someone-else", connection=Redis.from_url(redis_url), serializer=JSONSerializer).enqueue(
        "os.getcwd", job_id="11111111-1111-4111-8111-111111111111"
    )
    body = client.get(f"/jobs/{job.id}").json()
    assert body["model"] == "unknown" and body["status"] == "queued" and body["queue_position"] is None


@pytest.mark.parametrize(
    ("path", "content", "content_type"),
    [
        ("/generate/diffusion", b'{"num_images": 2,', "application/json"),  # malformed JSON
        ("/generate/diffusion", b"num_images=2", "application/x-www-form-urlencoded"),  # wrong content type
        ("/generate/diffusion", b'{"num_images": 1e308, "steps": 99999999999999999999999}', "application/json"),
        ("/generate/ebm", b'{"num_images": -3, "noise_scale": -1}', "application/json"),
        ("/generate/diffusion", '{"class_label": "猫"}'.encode(), "application/json"),  # unicode class name
        ("/generate", b'{"start_word": "\\u0000\\ud83d", "length": 3}', "application/json"),
        ("/embed", b"[1, 2, 3]", "application/json"),  # valid JSON, wrong shape
    ],
)
def test_hostile_bodies_get_a_4xx_with_a_message(
    client: TestClient, path: str, content: bytes, content_type: str
) -> None:
    response = client.post(path, content=content, headers={"content-type": content_type})
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["detail"]
