"""The webhook sender: `python -m gateway.webhooks`, a process of its own beside the gateway and the workers.

Workers (and the gateway's cancel route) append webhook events to a Redis stream, the outbox
(shared/service/events.py); every sender process reads it through one consumer group, so any number
of them share the work and an event is sent by one of them. For each event the sender describes the
job as `GET /jobs/{id}` does (its status document is the body), resolves and checks the destination
(shared/service/webhooks.py), signs the body (Standard Webhooks) and POSTs it to the address it
checked, without following redirects. A failure (no answer, not a 2xx) is retried after
`webhook_backoff_seconds`, doubled each time, up to `webhook_max_attempts` sends; a refused destination
is not retried. Each attempt is recorded in the job's webhook record, which the job status shows.

Every event is its own asyncio task: a slow or dead receiver holds only its own events (the events of
one job go out in order), never another job's, and never a worker. An event whose sender died before
it was done is taken over by another sender (XAUTOCLAIM) once it has been pending longer than a whole
round of retries could take.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any

import anyio
import httpx
from anyio import to_thread
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError, ResponseError

from gateway.jobs import JobStore
from shared.service import keys
from shared.service.events import DEFAULT_TTL, job_ttl
from shared.service.logs import configure_logging
from shared.service.settings import QueueSettings
from shared.service.webhooks import AllowList, RefusedDestinationError, check_addresses, headers, parse_url, resolve

logger = logging.getLogger("gateway.webhooks")
CONCURRENCY = 64  # sends in flight per process (retry waits hold no slot)
ALIVE_FILE = "/tmp/genservice-webhooks.alive"  # touched every loop: the container's healthcheck reads its age


class Sender:
    def __init__(self, settings: QueueSettings, name: str | None = None) -> None:
        self.settings = settings
        self.name = name or f"webhooks-{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.redis = Redis.from_url(settings.redis_url, socket_timeout=10)
        self.aredis = AsyncRedis.from_url(settings.redis_url, socket_timeout=10)
        self.store = JobStore(self.redis, settings)
        self.allow = AllowList.parse(settings.webhook_allow)
        self.base_url = settings.public_url.rstrip("/") + "/"
        self.slots = anyio.Semaphore(CONCURRENCY)
        self.job_locks: dict[str, anyio.Lock] = {}
        self.in_flight: set[str] = set()

    def round_seconds(self) -> float:
        """The longest one event can take to be sent or given up: after this, a pending event's sender is dead."""
        waits = sum(self.settings.webhook_backoff_seconds * 2**k for k in range(self.settings.webhook_max_attempts))
        return waits + self.settings.webhook_max_attempts * (self.settings.webhook_timeout + 5) + 30

    async def setup(self) -> None:
        try:
            await self.aredis.xgroup_create(keys.WEBHOOK_OUTBOX, keys.WEBHOOK_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, stop: anyio.Event) -> None:
        """Read the outbox until `stop` is set; each event becomes a task (then the tasks in flight finish)."""
        await self.setup()
        async with httpx.AsyncClient(timeout=self.settings.webhook_timeout, follow_redirects=False) as client:
            self.client = client
            async with anyio.create_task_group() as tasks:
                last_claim = 0.0
                while not stop.is_set():
                    _touch(ALIVE_FILE)
                    entries: list[tuple[Any, dict]] = []
                    if time.monotonic() - last_claim > 30:
                        last_claim = time.monotonic()
                        entries += await self.orphans()
                    try:
                        replies = await self.aredis.xreadgroup(
                            keys.WEBHOOK_GROUP, self.name, {keys.WEBHOOK_OUTBOX: ">"}, count=64, block=1000
                        )
                    except RedisError as exc:
                        logger.warning("webhook outbox unreadable: %s", exc)
                        await anyio.sleep(1)
                        continue
                    entries += [entry for _, found in replies or [] for entry in found]
                    for entry_id, fields in entries:
                        entry = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                        if entry not in self.in_flight:
                            self.in_flight.add(entry)
                            tasks.start_soon(self.deliver, entry, {k.decode(): v.decode() for k, v in fields.items()})

    async def orphans(self) -> list[tuple[Any, dict]]:
        """Events a dead sender left pending for longer than a whole round of retries."""
        try:
            reply = await self.aredis.xautoclaim(
                keys.WEBHOOK_OUTBOX, keys.WEBHOOK_GROUP, self.name, int(self.round_seconds() * 1000), count=64
            )
        except RedisError as exc:
            logger.warning("could not look for orphaned webhook events: %s", exc)
            return []
        return [entry for entry in reply[1] if entry[1]]  # deleted entries come back empty

    async def deliver(self, entry: str, fields: dict[str, str]) -> None:
        job_id, event = fields.get("job", ""), fields.get("event", "")
        lock = self.job_locks.setdefault(job_id, anyio.Lock())
        try:
            async with lock:  # one job's events in order
                await self._deliver(entry, job_id, event)
        except Exception:
            logger.exception("webhook event %s of job %s", entry, job_id)
        finally:
            self.in_flight.discard(entry)
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self.job_locks.pop(job_id, None)
            try:
                with anyio.CancelScope(shield=True):
                    await self.aredis.xack(keys.WEBHOOK_OUTBOX, keys.WEBHOOK_GROUP, entry)
                    await self.aredis.xdel(keys.WEBHOOK_OUTBOX, entry)
            except RedisError as exc:
                logger.warning("webhook event %s: could not acknowledge it: %s", entry, exc)

    def _describe(self, job_id: str) -> tuple[str, str, int] | None:
        """(url, body, ttl) of the job's webhook; None for a job that is gone or has no webhook."""
        found = self.store.fetch_with_lookups(job_id)
        if found is None:
            return None
        job, lookups = found
        url = job.kwargs.get("request", {}).get("webhook")
        if not url:
            return None
        return url, self.store.describe(job, self.base_url, lookups).model_dump_json(), job_ttl(job)

    async def _deliver(self, entry: str, job_id: str, event: str) -> None:
        record = keys.webhook_record(job_id)
        if not self.settings.webhooks_enabled:
            await self.record(record, DEFAULT_TTL, failed=1, last_error="webhooks are off on this service")
            return
        if event == "completed" and not await self.aredis.hsetnx(record, "completed", entry):
            return  # the job's completion was sent already (a running job canceled: worker and RQ both report it)
        described = await to_thread.run_sync(self._describe, job_id)
        if described is None:
            return
        url, body, ttl = described
        content, msg_id = body.encode(), f"msg_{job_id}_{entry}"
        await self.record(record, ttl, last_event=event)
        for attempt in range(self.settings.webhook_max_attempts):
            if attempt:
                await anyio.sleep(self.settings.webhook_backoff_seconds * 2 ** (attempt - 1))
            try:
                status = await self.send(url, msg_id, content, event)
            except RefusedDestinationError as exc:
                logger.warning("webhook of job %s refused: %s", job_id, exc)
                await self.record(record, ttl, failed=1, last_error=f"refused: {exc}", last_status="")
                return
            except (httpx.HTTPError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                await self.record(record, ttl, attempts=1, last_error=error, last_status="")
                continue
            if 200 <= status < 300:
                await self.record(record, ttl, attempts=1, delivered=1, last_status=str(status), last_error="")
                return
            await self.record(record, ttl, attempts=1, last_status=str(status), last_error=f"answered {status}")
        logger.warning("webhook of job %s (%s) given up after %d attempts", job_id, event, attempt + 1)
        await self.record(record, ttl, failed=1)

    async def send(self, url: str, msg_id: str, content: bytes, event: str) -> int:
        """One signed POST to the address checked just now; its HTTP status."""
        scheme, host, port = parse_url(url)
        try:
            addresses = await to_thread.run_sync(resolve, host, port)
        except OSError as exc:
            raise httpx.ConnectError(f"cannot resolve {host}: {exc}") from exc
        check_addresses(host, addresses, self.allow)
        target = httpx.URL(url)
        pinned = target.copy_with(host=str(addresses[0]))
        extra = {"Host": target.netloc.decode(), "webhook-event": event, "user-agent": "genservice-webhooks"}
        response = await self.client.post(
            pinned, content=content,
            headers={**headers(self.settings.webhook_secret, msg_id, int(time.time()), content), **extra},
            extensions={"sni_hostname": host} if scheme == "https" else {},
        )  # fmt: skip
        return response.status_code

    async def record(self, key: str, ttl: int, **fields: int | str) -> None:
        """Add counts (ints) and set values (strs) in the job's webhook record."""
        try:
            async with self.aredis.pipeline(transaction=True) as pipe:
                for name, value in fields.items():
                    if isinstance(value, int):
                        pipe.hincrby(key, name, value)
                    else:
                        pipe.hset(key, name, value)
                pipe.expire(key, ttl)
                await pipe.execute()
        except RedisError as exc:
            logger.warning("could not record a webhook attempt in %s: %s", key, exc)

    async def close(self) -> None:
        await self.aredis.aclose()
        self.redis.close()


def _touch(path: str) -> None:
    try:
        with open(path, "a"):
            os.utime(path)
    except OSError:
        pass


async def serve(settings: QueueSettings) -> None:
    sender, stop = Sender(settings), anyio.Event()
    logger.info("%s sending webhooks to %s", sender.name, ", ".join(settings.webhook_allow) or "nowhere (off)")

    async def on_signals() -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                stop.set()  # finish what is in flight, take nothing new
                return

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(on_signals)
        try:
            await sender.run(stop)
        finally:
            tasks.cancel_scope.cancel()
            await sender.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Send the service's webhooks (settings from GENSERVICE_*).")
    parser.parse_args(argv)
    settings = QueueSettings()
    configure_logging(settings.log_level, worker="webhooks")
    if not settings.webhooks_enabled:
        logger.warning("webhooks are off (GENSERVICE_WEBHOOK_ALLOW or GENSERVICE_WEBHOOK_SECRET unset); "
                       "events are still read and dropped")  # fmt: skip
    anyio.run(serve, settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
