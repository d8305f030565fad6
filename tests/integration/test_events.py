"""Server-sent events over real HTTP: a uvicorn gateway, RQ worker processes publishing through a real Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from gateway.client import follow_events
from gateway.client import main as client_main
from tests.integration.stack import Stack, wait_until

LONG = {"num_images": 1, "steps": 1000}  # full DDPM on the tiny model: seconds, long enough to watch


def frames(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """SSE frames (field -> value) from a response's lines; comments and the retry line skipped."""
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "event" in fields:
                yield fields
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


def watch(stack: Stack, job_id: str, last_id: str | None = None, stop_after: int | None = None) -> list[dict]:
    """The events of one connection, until the stream closes (or `stop_after` events: then hang up)."""
    headers = {"Last-Event-ID": last_id} if last_id else {}
    seen: list[dict] = []
    with stack.client.stream("GET", f"/jobs/{job_id}/events", headers=headers, timeout=30) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for frame in frames(response.iter_lines()):
            seen.append({"event": frame["event"], "id": frame.get("id"), **json.loads(frame["data"])})
            if stop_after is not None and len(seen) >= stop_after:
                break
    return seen


def test_a_stream_follows_a_job_from_queued_to_finished(stack: Stack) -> None:
    blocker = stack.submit("diffusion", **LONG)  # one worker: the next job waits in the queue
    stack.wait_for(blocker["job_id"], ("started",))
    job = stack.submit("diffusion", num_images=2, steps=1000, previews=2)
    events = watch(stack, job["job_id"])
    states = [e["status"] for e in events]
    assert states[0] == "queued" and events[0]["queue_position"] == 0 and events[0]["event"] == "status"
    assert "started" in states and states[-1] == "finished" and events[-1]["event"] == "end"
    assert all(e["event"] == "status" for e in events[:-1])  # one end event, last
    steps = [e["progress"]["step"] for e in events if e["progress"]]
    assert steps == sorted(steps) and any(0 < s < 1000 for s in steps)  # progress was pushed while it ran
    assert [p["step"] for p in events[-1]["previews"]] == [500, 1000] and len(events[-1]["results"]["images"]) == 2
    ids = [tuple(int(x) for x in e["id"].split("-")) for e in events]
    assert ids == sorted(ids)
    assert stack.status(blocker["job_id"])["status"] in ("started", "finished")


def test_a_reconnect_with_last_event_id_misses_nothing(stack: Stack) -> None:
    job = stack.submit("diffusion", **LONG)
    first = watch(stack, job["job_id"], stop_after=3)  # queued or started, then progress: hang up mid-run
    seen = first[-1]
    assert seen["status"] in ("queued", "started") and seen["event"] == "status"
    seen_step = (seen["progress"] or {}).get("step", -1)
    # while nobody listens the job moves on
    wait_until(lambda: (stack.status(job["job_id"])["progress"] or {}).get("step", -1) > seen_step + 50, 90,
               "progress while disconnected")  # fmt: skip
    headers = {"Last-Event-ID": seen["id"]}
    with stack.client.stream("GET", f"/jobs/{job['job_id']}/events", headers=headers) as response:
        resumed = json.loads(next(frames(response.iter_lines()))["data"])
    assert resumed["progress"]["step"] > seen_step + 50  # at once: the state it missed, not the next change
    rest = watch(stack, job["job_id"], last_id=seen["id"])
    assert rest[-1]["status"] == "finished" and rest[-1]["event"] == "end"
    again = watch(stack, job["job_id"], last_id=rest[-1]["id"])  # after the end: the end again, then close
    assert [e["event"] for e in again] == ["end"]


def test_a_canceled_job_ends_its_stream(stack: Stack) -> None:
    blocker = stack.submit("diffusion", **LONG)
    queued = stack.submit("diffusion", **LONG)
    with stack.client.stream("GET", f"/jobs/{queued['job_id']}/events") as response:
        lines = response.iter_lines()
        first = next(frames(lines))
        assert json.loads(first["data"])["status"] == "queued"
        assert stack.client.delete(f"/jobs/{queued['job_id']}").json()["status"] == "canceled"
        last = next(frames(lines))
    assert last["event"] == "end" and json.loads(last["data"])["status"] == "canceled"
    stack.client.delete(f"/jobs/{blocker['job_id']}")


def test_the_command_line_client_follows_the_stream(stack: Stack, tmp_path: Path) -> None:
    job = stack.submit("diffusion", num_images=1, steps=50)
    seen: list[dict] = []
    final = follow_events(stack.client, job["status_url"], seen.append)
    assert final is not None and final["status"] == "finished" and seen[-1] == final and len(seen) >= 2
    out = tmp_path / "grid.png"
    assert client_main(["diffusion", "--n", "1", "--steps", "5", "--url", stack.url, "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
