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
from typing import Generic, TypeVar

import msgspec
from nats.js import JetStreamContext

from shared import events as ev

log = logging.getLogger("trainyard.agent.publish")

ROW_OVERHEAD_BYTES = 48
T = TypeVar("T")


async def publish_retrying(
    js: JetStreamContext, subject: str, payload: bytes, msg_id: str, *, what: str = ""
) -> int:
    """Publish until the server acknowledges; returns the stream sequence. Same id each try."""
    delay_s = 0.05
    while True:
        try:
            ack = await js.publish(subject, payload, headers={"Nats-Msg-Id": msg_id}, timeout=5.0)
            return ack.seq
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # disconnected, no responders, timeout: the same id again
            log.warning("publish %s failed (%s); retrying in %.2fs", what or subject, exc, delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 2.0)


class ColumnBatcher:
    """Rows appended column-wise; shipped in naturally sized batches by `run()`.

    `build(first_seq, columns)` turns a slice of rows into the event to publish.
    """

    def __init__(
        self,
        js: JetStreamContext,
        subject: str,
        id_prefix: str,
        columns: tuple[str, ...],
        build: Callable[[int, dict[str, list]], msgspec.Struct],
        max_bytes: int,
        first_seq: int = 0,
        on_ack: Callable[[msgspec.Struct], None] | None = None,
    ) -> None:
        self._js = js
        self._on_ack = on_ack
        self._subject = subject
        self._id_prefix = id_prefix
        self._names = columns
        self._cols: dict[str, list] = {name: [] for name in columns}
        self._sizes: list[int] = []
        self.pending_bytes = 0  # payload bytes added and not yet acknowledged
        self._build = build
        self._max_bytes = max_bytes
        self.next_seq = first_seq  # seq of the first row not yet shipped
        self.added = first_seq  # seq the next added row gets
        self.last_stream_seq = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, size: int, *values: object) -> None:
        for name, value in zip(self._names, values):
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
        for name, values in zip(self._names, columns):
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
            count = self._cut()
            batch = {name: col[:count] for name, col in self._cols.items()}
            first = self.next_seq
            message = self._build(first, batch)
            self.last_stream_seq = await publish_retrying(
                self._js, self._subject, ev.encode(message), f"{self._id_prefix}:{first}"
            )
            for col in self._cols.values():
                del col[:count]
            self.pending_bytes -= sum(itertools.islice(self._sizes, count))
            del self._sizes[:count]
            self.next_seq = first + count
            if self._on_ack is not None:
                self._on_ack(message)

    async def drained(self) -> None:
        """Wait until every row added so far has been acknowledged by the server."""
        await self._idle.wait()


class LatestSlot(Generic[T]):
    """Keeps only the newest reading; publishes it whenever the previous publish was acked.

    The message is built from the reading only when it leaves (`build`), so a trainer that
    reports progress on every line pays for one message per round trip, not one per line.
    """

    def __init__(self, js: JetStreamContext, subject: str, id_prefix: str, build: Callable[[T], msgspec.Struct]) -> None:
        self._js = js
        self._subject = subject
        self._id_prefix = id_prefix
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
            await publish_retrying(
                self._js, self._subject, ev.encode(self._build(value)), f"{self._id_prefix}:{self._count}"
            )

    async def drained(self) -> None:
        await self._idle.wait()
