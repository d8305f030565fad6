"""The web page and the previews API, in-process against a real Redis."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from gateway.app import create_app
from gateway.routes.ui import STATIC
from gateway.settings import GatewaySettings
from shared.service.results import store_preview
from tests.integration.stack import free_port


@pytest.fixture(scope="module")
def client(redis_url: str) -> Iterator[TestClient]:
    settings = GatewaySettings(redis_url=redis_url, text_service_url=f"http://127.0.0.1:{free_port()}")
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_the_page_and_its_files_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="job-form"' in page.text and 'name="viewport"' in page.text
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"], name
    assert client.get("/static/missing.js").status_code == 404


def test_the_page_works_offline() -> None:
    """Nothing is loaded from another host: no CDN, no web fonts."""
    for path in STATIC.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), path.name
        assert "@import" not in text and "url(http" not in text, path.name


def test_the_page_offers_every_sampler_and_the_guidance_interval(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()["components"]["schemas"]["DiffusionRequest"]["properties"]
    api_samplers = {value for option in schema["sampler"]["anyOf"] for value in option.get("enum", ())}
    page = client.get("/").text
    select = page[page.index('<select id="sampler"') : page.index("</select>", page.index('<select id="sampler"'))]
    assert set(re.findall(r'<option value="([a-z0-9_]+)"', select)) == api_samplers == {"ddpm", "ddim", "dpmpp_2m"}
    assert 'id="guidance-lo"' in page and 'id="guidance-hi"' in page
    script = client.get("/static/app.js").text
    assert "body.guidance_interval" in script
    ebm = client.get("/openapi.json").json()["components"]["schemas"]["EBMRequest"]["properties"]
    assert "guidance_scale" in ebm and 'id="ebm-guidance"' in page and '["ebm-guidance", "guidance_scale"]' in script


def test_the_page_is_not_part_of_the_api_schema(client: TestClient) -> None:
    paths = set(client.get("/openapi.json").json()["paths"])
    assert "/" not in paths and not any(p.startswith("/static") for p in paths)
    assert "/jobs/{job_id}/previews/{k}.png" in paths


@pytest.mark.parametrize(("model", "value"), [("diffusion", -1), ("diffusion", 17), ("ebm", 17), ("ebm", "some")])
def test_previews_are_bounded(client: TestClient, model: str, value: object) -> None:
    response = client.post(f"/generate/{model}", json={"steps": 10, "previews": value})
    assert response.status_code == 422
    assert [error["loc"][-1] for error in response.json()["detail"]] == ["previews"]


def test_a_job_lists_and_serves_its_previews(client: TestClient, redis_url: str) -> None:
    job_id = client.post("/generate/diffusion", json={"steps": 10, "previews": 4}).json()["job_id"]
    status = client.get(f"/jobs/{job_id}").json()
    assert status["parameters"]["previews"] == 4 and status["previews"] == []
    assert client.get(f"/jobs/{job_id}/previews/0.png").status_code == 404  # not taken yet

    redis = Redis.from_url(redis_url)  # what the worker's recorder writes
    store_preview(redis, job_id, 0, 3, b"\x89PNG-zero", ttl=60)
    store_preview(redis, job_id, 1, 5, b"\x89PNG-one", ttl=60)
    previews = client.get(f"/jobs/{job_id}").json()["previews"]
    assert [(p["index"], p["step"]) for p in previews] == [(0, 3), (1, 5)]
    assert previews[1]["url"].endswith(f"/jobs/{job_id}/previews/1.png")
    response = client.get(f"/jobs/{job_id}/previews/1.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content == b"\x89PNG-one"
    assert client.get(f"/jobs/{job_id}/previews/2.png").status_code == 404
    assert client.get(f"/jobs/{job_id}/previews/-1.png").status_code == 404
    assert client.get("/jobs/00000000-0000-4000-8000-000000000000/previews/0.png").status_code == 404
    client.delete(f"/jobs/{job_id}")


def test_a_job_without_previews_lists_none(client: TestClient) -> None:
    job_id = client.post("/generate/ebm", json={"num_images": 1}).json()["job_id"]
    status = client.get(f"/jobs/{job_id}").json()
    assert status["previews"] == [] and status["parameters"]["previews"] == 0
    client.delete(f"/jobs/{job_id}")
