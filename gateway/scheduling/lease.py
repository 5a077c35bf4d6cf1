"""Which gateway schedules: a lease in the JetStream KV bucket `ty_lease` (DESIGN §4).

Exactly one replica places jobs at a time. The lease record names its holder and when it
expires; the holder renews it every third of the TTL with a compare-and-set on the entry's
revision, and any replica may take it over with the same compare-and-set once it has expired.
A holder that dies simply stops renewing; one that shuts down cleanly deletes the record so the
next replica takes over at once. The CAS means two replicas can never both believe they renewed
the same revision. (Expiry compares wall clocks across gateways: keep them NTP-synced; a skew
only delays or hastens a take-over, it never gives two leaders a successful renewal.)
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from gateway.writer import JetStreamWrites
from shared import subjects
from shared.clock import now_s

log = logging.getLogger("trainyard.lease")

KEY = "scheduler"


class LeaseRecord(msgspec.Struct):
    holder: str
    expires_s: float
    since_s: float


class SchedulerLease:
    def __init__(self, js: JetStreamContext, replica: str, ttl_s: float, writes: JetStreamWrites) -> None:
        self.js = js
        self.writes = writes  # a renewal is a JetStream write: its failures show in /health
        # Per process, not per replica name: a restarted replica (or a second one started by
        # mistake under the same name) never believes it holds its predecessor's lease.
        self.replica = f"{replica}-{secrets.token_hex(3)}"
        self.ttl_s = ttl_s
        self.is_leader = False
        self.holder: str | None = None  # as last seen, whoever it is
        self.since_s: float | None = None
        self.on_change: list[Callable[[bool], None]] = []
        self._kv: KeyValue | None = None
        self._revision = 0

    async def first_look(self) -> None:
        """Read (or take) the lease once, so a replica knows who leads before it answers."""
        self._kv = await self.js.key_value(subjects.LEASE_BUCKET)
        try:
            await self.tick()
        except Exception as exc:
            log.warning("lease check failed (%s); retrying in the background", exc)

    async def run(self) -> None:
        if self._kv is None:
            self._kv = await self.js.key_value(subjects.LEASE_BUCKET)
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away: we cannot prove we still hold it
                log.warning("lease check failed (%s); not scheduling until it succeeds", exc)
                self._set(False, self.holder)

    async def tick(self) -> None:
        assert self._kv is not None
        now = now_s()
        try:
            entry = await self._kv.get(KEY)
        except NotFoundError:  # never held, or released (a delete marker)
            entry = None
        record = msgspec.json.decode(entry.value, type=LeaseRecord) if entry and entry.value else None
        mine = record is not None and record.holder == self.replica
        if record is not None and not mine and record.expires_s > now:
            self._set(False, record.holder, record.since_s)
            return
        since = record.since_s if mine and record else now
        value = msgspec.json.encode(LeaseRecord(self.replica, now + self.ttl_s, since))
        try:
            if entry is None:
                self._revision = await self._kv.create(KEY, value)
            else:
                self._revision = await self._kv.update(KEY, value, last=entry.revision)
        except KeyWrongLastSequenceError:  # someone else renewed or took it first
            self._set(False, None)
            return
        except Exception as exc:
            self.writes.failed(exc)
            raise
        self.writes.succeeded()
        if not mine:
            log.info("replica %s now holds the scheduler lease%s", self.replica,
                     f" (took it over from {record.holder}, expired)" if record else "")
        self._set(True, self.replica, since)

    def _set(self, leader: bool, holder: str | None, since: float | None = None) -> None:
        changed = leader != self.is_leader
        self.is_leader, self.holder, self.since_s = leader, holder, since
        if changed:
            for callback in self.on_change:
                callback(leader)

    async def release(self) -> None:
        """Give the lease up now (clean shutdown), so another replica need not wait for expiry."""
        if self._kv is None or not self.is_leader:
            return
        try:
            await self._kv.delete(KEY, last=self._revision)
        except Exception as exc:
            log.info("lease not released (%s); it expires by itself", exc)
        self._set(False, None)
