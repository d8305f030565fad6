"""`python -m gateway.client`'s follower: the event stream when it can, resumed after a drop, else polling."""

from __future__ import annotations

import json

import httpx

from gateway.client import follow

JOB = "33333333-3333-4333-8333-333333333333"
URL = f"http://gw/jobs/{JOB}"


def doc(state: str, step: int | None = None) -> dict:
    progress = None if step is None else {"step": step, "total": 10, "fraction": step / 10}
    return {"job_id": JOB, "status": state, "progress": progress, "queue_position": None, "parameters": {}}


def event(kind: str, body: dict, event_id: str) -> str:
    return f"id: {event_id}\nevent: {kind}\ndata: {json.dumps(body)}\n\n"


def test_it_follows_the_stream_and_resumes_after_a_drop() -> None:
    asked: list[str | None] = []

    def gateway(request: httpx.Request) -> httpx.Response:
        assert request.url.path == f"/jobs/{JOB}/events"  # never polls while the stream works
        asked.append(request.headers.get("last-event-id"))
        if len(asked) == 1:  # the first connection drops after one event
            return httpx.Response(200, text="retry: 2000\n\n" + event("status", doc("started", 2), "5-0"))
        return httpx.Response(200, text=": heartbeat\n\n" + event("end", doc("finished", 10), "9-0"))

    with httpx.Client(transport=httpx.MockTransport(gateway)) as client:
        final = follow(client, URL, poll=0.01)
    assert final["status"] == "finished" and asked == [None, "5-0"]


def test_it_polls_when_the_stream_is_refused() -> None:
    polls = [doc("queued"), doc("started", 5), doc("finished", 10)]
    paths: list[str] = []

    def gateway(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        if request.url.path.endswith("/events"):
            return httpx.Response(429, json={"detail": "too many streams"}, headers={"Retry-After": "5"})
        return httpx.Response(200, json=polls.pop(0))

    with httpx.Client(transport=httpx.MockTransport(gateway)) as client:
        final = follow(client, URL, poll=0.01)
    assert final["status"] == "finished" and paths == [f"/jobs/{JOB}/events"] + [f"/jobs/{JOB}"] * 3


def test_the_request_body_carries_the_sampler_and_the_guidance_interval() -> None:
    from gateway.client import build_parser, request_body

    args = build_parser().parse_args(["diffusion", "--n", "2", "--steps", "20", "--sampler", "dpmpp_2m",
                                      "--guidance-scale", "3", "--guidance-interval", "0.3", "5"])  # fmt: skip
    assert request_body(args) == {"num_images": 2, "steps": 20, "guidance_scale": 3.0, "sampler": "dpmpp_2m",
                                  "guidance_interval": [0.3, 5.0]}  # fmt: skip
    assert request_body(build_parser().parse_args(["diffusion"])) == {"num_images": 4}
