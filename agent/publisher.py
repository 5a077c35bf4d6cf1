"""Publishing from the agent: naturally batched columns, latest-value slots, and single events.

Natural batching (DESIGN §2): one publish is in flight per channel; when its ack returns, the
next message carries everything that accumulated meanwhile (bounded by bytes). A lone line
leaves at once; under load batches grow by themselves. No flush timer.

Every message carries a `Nats-Msg-Id` fixed when the batch is cut, so a publish retried after a
reconnect is deduplicated by the server.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from nats.errors import MaxPayloadError
from nats.js import JetStreamContext

from agent.metrics import COUNTS
from shared import wire

log = logging.getLogger("trainyard.agent.publish")

ROW_OVERHEAD_BYTES = 48
PUBLISH_TIMEOUT_S = 5.0
T = TypeVar("T")


async def publish(js: JetStreamContext, message: wire.Message, *, host: str, unique: object = None) -> int:
    """The agent's one way to publish: until the server acknowledges (same id each try);
    returns the stream sequence. Subject and id come from the message (shared/wire.py)."""
    return await _publish_retrying(js, wire.envelope(message, host=host, unique=unique))


async def publish_once(js: JetStreamContext, message: wire.Message, *, host: str, unique: object = None) -> int:
    """One try (a heartbeat: a missed one is fine, the next comes soon)."""
    env = wire.envelope(message, host=host, unique=unique)
    ack = await js.publish(env.subject, env.payload, headers=env.headers, timeout=PUBLISH_TIMEOUT_S)
    return ack.seq


class PayloadTooLarge(Exception):
    """The server can never take this message (over its max_payload): retrying cannot help."""


async def _publish_retrying(js: JetStreamContext, env: wire.Envelope) -> int:
    delay_s = 0.05
    while True:
        try:
            ack = await js.publish(env.subject, env.payload, headers=env.headers, timeout=PUBLISH_TIMEOUT_S)
            COUNTS.published_messages += 1
            COUNTS.published_bytes += len(env.payload)
            return ack.seq
        except asyncio.CancelledError:
            raise
        except MaxPayloadError:
            raise PayloadTooLarge(f"{env.msg_id}: {len(env.payload):,} bytes is over the server's limit") from None
        except Exception as exc:  # disconnected, no responders, timeout: the same id again
            COUNTS.publish_retries += 1
            log.warning("publish %s failed (%s); retrying in %.2fs", env.msg_id, exc, delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 2.0)


class ColumnBatcher:
    """Rows appended column-wise; shipped in naturally sized batches by `run()`.

    `build(first_seq, columns)` turns a slice of rows into the event to publish.
    """

    def __init__(
        self,
        js: JetStreamContext,
        host: str,
        columns: tuple[str, ...],
        build: Callable[[int, dict[str, list]], wire.Message],
        max_bytes: int,
        first_seq: int = 0,
        on_ack: Callable[[Any], None] | None = None,
    ) -> None:
        self._js = js
        self._on_ack = on_ack
        self._host = host
        self._names = columns
        self._cols: dict[str, list] = {name: [] for name in columns}
        self._sizes: list[int] = []
        self.pending_bytes = 0  # payload bytes added and not yet acknowledged
        self._build = build
        self._max_bytes = max_bytes
        self.next_seq = first_seq  # seq of the first row not yet shipped
        self._rows_cap: int | None = None  # after a batch was over the server's limit
        self.added = first_seq  # seq the next added row gets
        self.last_stream_seq = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, size: int, *values: object) -> None:
        for name, value in zip(self._names, values, strict=True):
            self._cols[name].append(value)
        self._sizes.append(size)
        self.pending_bytes += size
        self.added += 1
        self._idle.clear()
        self._wake.set()

    def extend(self, sizes: Iterable[int], columns: tuple[list, ...]) -> None:
        """Bulk add: one list per column, all the same length; `sizes` the payload bytes of
        each row (a `map(len, texts)` is fine: it is consumed here, in C)."""
        before = len(self._sizes)
        self._sizes.extend(sizes)
        added = len(self._sizes) - before
        if not added:
            return
        self.pending_bytes += sum(self._sizes[before:])
        for name, values in zip(self._names, columns, strict=True):
            self._cols[name].extend(values)
        self.added += added
        self._idle.clear()
        self._wake.set()

    def _cut(self) -> int:
        """How many pending rows fit in one message (at least one). Sums in C: a backlog of a
        million short lines is cut without a Python loop over it."""
        most = max(1, self._max_bytes // ROW_OVERHEAD_BYTES)  # no more rows than this can fit
        window = itertools.islice(self._sizes, most)
        totals = list(itertools.accumulate(map(ROW_OVERHEAD_BYTES.__add__, window)))
        return max(1, bisect.bisect_right(totals, self._max_bytes))

    async def run(self) -> None:
        while True:
            if not self._sizes:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            count = self._cut() if self._rows_cap is None else min(self._cut(), self._rows_cap)
            batch = {name: col[:count] for name, col in self._cols.items()}
            first = self.next_seq
            message = self._build(first, batch)
            acked: wire.Message | None = message
            try:
                self.last_stream_seq = await publish(self._js, message, host=self._host, unique=first)
            except PayloadTooLarge as exc:
                # Sizes are counted in characters (cheap on the hot path); wide characters can
                # take a batch over the server's limit: send fewer rows. A single row too big
                # for any message is dropped (its number stays used), never retried forever.
                if count > 1:
                    self._rows_cap = count // 2
                    continue
                log.error("row %s dropped: %s", first, exc)
                acked = None
            self._rows_cap = None
            for col in self._cols.values():
                del col[:count]
            self.pending_bytes -= sum(itertools.islice(self._sizes, count))
            del self._sizes[:count]
            self.next_seq = first + count
            if self._on_ack is not None and acked is not None:
                self._on_ack(acked)

    async def drained(self) -> None:
        """Wait until every row added so far has been acknowledged by the server."""
        await self._idle.wait()


class LatestSlot(Generic[T]):
    """Keeps only the newest reading; publishes it whenever the previous publish was acked.

    The message is built from the reading only when it leaves (`build`), so a trainer that
    reports progress on every line pays for one message per round trip, not one per line.
    """

    def __init__(self, js: JetStreamContext, host: str, build: Callable[[T], wire.Message]) -> None:
        self._js = js
        self._host = host
        self._build = build
        self._value: T | None = None
        # Ids stay unique across agent restarts: start from the clock, count up.
        self._count = time.time_ns()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def set(self, value: T) -> None:
        self._value = value
        if self._idle.is_set():
            self._idle.clear()
            self._wake.set()

    async def run(self) -> None:
        while True:
            if self._value is None:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            value, self._value = self._value, None
            self._count += 1
            await publish(self._js, self._build(value), host=self._host, unique=self._count)

    async def drained(self) -> None:
        await self._idle.wait()
