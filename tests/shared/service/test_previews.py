"""The trajectory recorder: which steps it keeps, and what it stores in Redis."""

from __future__ import annotations

import io
import uuid

import pytest
import torch
from PIL import Image
from redis import Redis

from shared.service.previews import MAX_PREVIEWS, PreviewRecorder, preview_steps
from shared.service.results import list_previews, load_preview, store_preview


@pytest.mark.parametrize(
    ("count", "total", "steps"),
    [
        (4, 20, [5, 10, 15, 20]),
        (3, 10, [4, 7, 10]),
        (8, 3, [1, 2, 3]),  # more previews than steps: one per step
        (1, 1000, [1000]),
        (0, 50, []),
        (100, 1000, [63, 125, 188, 250, 313, 375, 438, 500, 563, 625, 688, 750, 813, 875, 938, 1000]),  # capped
    ],
)
def test_preview_steps_are_evenly_spaced_and_end_at_the_last_step(count: int, total: int, steps: list[int]) -> None:
    assert preview_steps(count, total) == steps
    assert len(steps) <= MAX_PREVIEWS


def test_recorder_stores_grids_of_the_chosen_steps(redis_url: str) -> None:
    redis, job_id = Redis.from_url(redis_url), str(uuid.uuid4())
    recorder = PreviewRecorder(redis, job_id, count=4, ttl=60)
    x = torch.linspace(-1, 1, 3 * 3 * 32 * 32).reshape(3, 3, 32, 32)  # 3 images in [-1, 1]
    for step in range(1, 21):
        recorder(step, 20, x)
    assert list_previews(redis, job_id) == [(0, 5), (1, 10), (2, 15), (3, 20)]
    grid = Image.open(io.BytesIO(load_preview(redis, job_id, 3) or b""))
    assert grid.size == (2 + 2 * 34, 2 + 2 * 34) and grid.mode == "RGB"  # 3 images: a 2x2 grid
    assert 0 < redis.ttl(f"genservice:result:{job_id}:preview:0") <= 60
    assert load_preview(redis, job_id, 4) is None


def test_recorder_copes_with_a_callback_that_skips_steps(redis_url: str) -> None:
    redis, job_id = Redis.from_url(redis_url), str(uuid.uuid4())
    recorder = PreviewRecorder(redis, job_id, count=4, ttl=60)
    for step in (3, 12, 20):  # before the first target, then past 5 and 10 at once, then past 15 and 20
        recorder(step, 20, torch.zeros(1, 3, 32, 32))
    assert list_previews(redis, job_id) == [(0, 12), (1, 20)]


def test_a_new_attempt_forgets_the_previews_of_the_last(redis_url: str) -> None:
    redis, job_id = Redis.from_url(redis_url), str(uuid.uuid4())
    for k in range(3):
        store_preview(redis, job_id, k, 10 * k, b"png", ttl=60)
    PreviewRecorder(redis, job_id, count=2, ttl=60)
    assert list_previews(redis, job_id) == []
    assert load_preview(redis, job_id, 0) is None  # its PNG key is left to expire, but no longer served
