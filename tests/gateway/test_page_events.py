"""The web page's job follower (gateway/static/app.js) under Node with a stub DOM and a scripted gateway:
it reads the event stream, resumes it with Last-Event-ID after a drop, and polls when the stream is refused.
Skipped where Node is not installed (tests/browser drives the page in a real browser against the live stack)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.stack import ROOT

HARNESS = Path(__file__).with_name("page_harness.js")
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")
JOB = "jobs/44444444-4444-4444-8444-444444444444"


def run_page(scenario: str) -> dict:
    done = subprocess.run(
        [str(NODE), str(HARNESS), str(ROOT / "gateway/static/app.js"), scenario],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return json.loads(done.stdout)


def test_the_page_follows_the_stream_and_resumes_it_after_a_drop() -> None:
    report = run_page("stream")
    asked = [(r["path"], r["lastEventId"]) for r in report["requests"] if r["path"].startswith("jobs/")]
    assert asked == [(f"{JOB}/events", None), (f"{JOB}/events", "5-0")]  # no poll while the stream works
    assert report["seen"] == ["started", "finished"] and report["status"] == "finished"


def test_the_page_polls_when_the_stream_is_refused() -> None:
    report = run_page("refused")
    asked = [r["path"] for r in report["requests"] if r["path"].startswith("jobs/")]
    assert asked == [f"{JOB}/events", JOB, JOB]
    assert report["seen"] == ["started", "finished"] and report["status"] == "finished"
