"""JobStore details the HTTP tests do not see: the reap rate limit and the one-pipeline poll."""

from __future__ import annotations

import pytest
from redis import Redis

from gateway import jobs
from gateway.jobs import JobStore
from gateway.settings import GatewaySettings
from shared.service import keys


@pytest.fixture
def store(redis_url: str) -> JobStore:
    redis = Redis.from_url(redis_url)
    redis.flushdb()
    return JobStore(redis, GatewaySettings(redis_url=redis_url))  # type: ignore[call-arg]


def test_a_queue_is_reaped_at_most_once_an_interval(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([100.0, 100.5, 101.2, 101.3])
    monkeypatch.setattr(jobs.time, "monotonic", lambda: next(clock))
    queue = store.queue("diffusion")
    assert [store._reap_due(queue) for _ in range(4)] == [True, False, True, False]


def test_a_poll_reads_what_two_round_trips_read(store: JobStore) -> None:
    job = store.submit("diffusion", {"num_images": 1, "steps": 5, "previews": 2})
    store.redis.hset(keys.preview_steps(job.id), mapping={"1": 4, "0": 2})
    fetched = store.fetch(job.id)
    found = store.fetch_with_lookups(job.id)
    assert fetched is not None and found is not None
    assert store.describe(found[0], "http://x/", found[1]) == store.describe(fetched, "http://x/")
    assert found[1].positions["diffusion"] == 0 and [p[0] for p in found[1].previews] == [0, 1]
    assert store.fetch_with_lookups("not-a-uuid") is None
    assert store.fetch_with_lookups("00000000-0000-0000-0000-000000000000") is None
