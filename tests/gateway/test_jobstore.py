"""JobStore details the HTTP tests do not see: the reap rate limit and the one-pipeline poll."""

from __future__ import annotations

import asyncio

import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from rq.job import Job

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


def test_a_submit_reads_its_position_in_the_same_transaction(
    store: JobStore, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    positions = [store.submit_with_position("diffusion", {"num_images": 1, "steps": 5})[1] for _ in range(2)]
    job, position = store.submit_with_position("ebm", {"num_images": 1})
    assert positions == [0, 1] and position == 0

    async def on_the_event_loop() -> tuple[Job, int]:  # the gateway's route: RQ's writes sent on the async client
        async with AsyncRedis.from_url(redis_url) as aredis:
            return await JobStore(store.redis, store.settings, aredis).asubmit_with_position(
                "diffusion", {"num_images": 2}
            )

    with monkeypatch.context() as patch:  # nothing goes out on the sync (blocking) client
        patch.setattr(store.redis, "execute_command", _no_redis)
        ajob, aposition = asyncio.run(on_the_event_loop())
    assert aposition == 2 and store.queue("diffusion").get_job_position(ajob.id) == 2
    fetched = store.fetch(ajob.id)  # RQ reads it as one of its own
    assert fetched is not None and fetched.get_status() == "queued" and fetched.origin == "diffusion"
    assert fetched.kwargs == {"request": {"num_images": 2}} and fetched.meta["model"] == "diffusion"
    assert ajob.to_dict().keys() == fetched.to_dict().keys() == job.to_dict().keys()
    assert store.redis.sismember("rq:queues", "rq:queue:diffusion") and store.queue("ebm").get_job_position(job.id) == 0


def _no_redis(*args: object, **kwargs: object) -> None:
    raise AssertionError(f"describe used Redis {args} where describe_reads_redis said it would not")


@pytest.mark.parametrize("state", ["queued", "started", "finished", "failed", "cancel-flagged"])
def test_describe_reads_redis_only_where_it_says_so(
    store: JobStore, state: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The poll route describes a job on the event loop when describe_reads_redis is False: then describe must
    not touch Redis (it would block the loop); where it is True, describe in a thread gives the same answer."""
    job = store.submit("diffusion", {"num_images": 1, "steps": 5})
    if state in ("started", "finished", "failed"):
        store.redis.hset(job.key, "status", state)
    if state == "cancel-flagged":
        store.redis.set(keys.cancel_flag(job.id), 1)
    monkeypatch.setattr(jobs, "_last_reap", {})
    found = store.fetch_with_lookups(job.id)
    assert found is not None
    if state == "started":  # a reap is due on the first poll: it reads Redis; the next poll within the interval not
        assert store.describe_reads_redis(*found)
        store.describe(found[0], "http://x/", found[1])
        found = store.fetch_with_lookups(job.id)
        assert found is not None
    reads = store.describe_reads_redis(*found)
    assert reads == (state in ("failed", "cancel-flagged"))
    if not reads:
        expected = store.describe(found[0], "http://x/", found[1])
        with monkeypatch.context() as patch:  # the job is bound to the same client
            patch.setattr(store.redis, "execute_command", _no_redis)
            patch.setattr(store.redis, "pipeline", _no_redis)
            assert store.describe(found[0], "http://x/", found[1]) == expected
