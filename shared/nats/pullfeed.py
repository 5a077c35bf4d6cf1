"""Read a JetStream pull consumer in natural batches (DESIGN §2).

`next_batch()` returns as soon as one message is there, together with everything else that
arrived meanwhile. A single outstanding pull request keeps the server pushing; it is topped up
when half consumed. nats-py's `fetch(batch=N)` is not used because, once one message arrived,
it waits for the whole batch or the timeout, which costs latency at low load.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared.aio import wait_set

log = logging.getLogger("trainyard.pullfeed")


# While waiting, how often to check whether the pull request was lost (a reconnect): what a
# NATS restart costs a feed in delay, at most.
LOST_REQUEST_CHECK_S = 0.25


class ConsumerGone(Exception):
    """The server deleted the consumer this feed reads (status 409 Consumer Deleted)."""


class PullFeed:
    def __init__(
        self,
        nc: Client,
        stream: str,
        consumer: str,
        *,
        batch: int = 1024,
        max_bytes: int = 32 * 1024 * 1024,
        expires_s: float = 5.0,
    ) -> None:
        self._nc = nc
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._batch = batch
        self._max_bytes = max_bytes
        self._expires_s = expires_s
        self._buf: collections.deque[Msg] = collections.deque()
        self._wake = asyncio.Event()
        self._outstanding = 0
        self._sub: Subscription | None = None
        self._inbox = ""
        self._error: Exception | None = None
        self._requested_at = 0.0
        self._reconnects_seen = 0

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(
            self._inbox, cb=self._on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1
        )

    @property
    def started(self) -> bool:
        return self._sub is not None

    async def stop(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:  # connection already closed
                pass
            self._sub = None

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status is None:
            self._buf.append(msg)
            self._outstanding -= 1
            self._wake.set()
            return
        if status == "100":  # idle heartbeat / flow control
            return
        # 404/408/409: the request ended; the header says how many of it went unfilled.
        pending = msg.headers.get("Nats-Pending-Messages") if msg.headers else None
        self._outstanding = max(0, self._outstanding - int(pending)) if pending else 0
        if status == "409" and "Deleted" in (msg.headers.get("Description", "") if msg.headers else ""):
            self._error = ConsumerGone(msg.headers.get("Description", "") if msg.headers else "")
        self._wake.set()

    async def _request(self, count: int) -> None:
        body = {
            "batch": count,
            "expires": int(self._expires_s * 1e9),
            "max_bytes": self._max_bytes,
        }
        self._outstanding += count
        self._requested_at = asyncio.get_running_loop().time()
        self._reconnects_seen = self._nc.stats["reconnects"]
        await self._nc.publish(self._next_subject, json.dumps(body).encode(), reply=self._inbox)

    def _request_lost(self, now: float) -> bool:
        """A pull request dies silently with the connection or the server: after a reconnect,
        or when neither a message nor a status came for longer than a request lives."""
        return (self._nc.stats["reconnects"] != self._reconnects_seen
                or now - self._requested_at > self._expires_s + 1.0)

    def holds(self, needle: bytes) -> bool:
        """Whether a message received but not yet taken contains `needle`."""
        return any(needle in msg.data for msg in self._buf)

    async def gather_until(self, deadline: float, needle: bytes) -> None:
        """Let messages gather until `deadline` (the loop's time), or until one that contains
        `needle` has come, whichever is first."""
        loop = asyncio.get_running_loop()
        while not self.holds(needle) and (left := deadline - loop.time()) > 0:
            if self._outstanding <= 0:
                await self._request(self._batch)
            self._wake.clear()
            await wait_set(self._wake, min(left, LOST_REQUEST_CHECK_S))

    async def next_batch(self, max_msgs: int | None = None, timeout_s: float | None = None) -> list[Msg]:
        """Wait for at least one message (or `timeout_s`, then return []); take what is there."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while not self._buf:
            if self._error is not None:
                raise self._error
            if self._outstanding <= 0:
                await self._request(self._batch)
            self._wake.clear()
            wait_s = LOST_REQUEST_CHECK_S
            if deadline is not None:
                wait_s = min(wait_s, deadline - loop.time())
                if wait_s <= 0:
                    return []
            if not await wait_set(self._wake, wait_s):
                if deadline is not None and loop.time() >= deadline:
                    return []
                if self._request_lost(loop.time()):
                    self._outstanding = 0  # ask again
        limit = len(self._buf) if max_msgs is None else min(max_msgs, len(self._buf))
        batch = [self._buf.popleft() for _ in range(limit)]
        if self._outstanding < self._batch // 2:
            await self._request(self._batch - max(self._outstanding, 0))
        return batch


def skipped_after(last_seq: int, msgs: list[Msg]) -> str | None:
    """Whether `msgs` skip a stream sequence after `last_seq` (repeats at or below it are not a
    skip): "jumped from A to B", else None."""
    expected = last_seq + 1
    for msg in msgs:
        seq = msg.metadata.sequence.stream
        if seq < expected:
            continue
        if seq > expected:
            return f"jumped from {expected - 1} to {seq}"
        expected += 1
    return None
