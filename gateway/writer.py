"""Writes from the gateway: the one way it publishes (an event, a command, a control), and
read-your-writes: after a write, wait (briefly) until the projector shows it, so the client
that wrote reads its own write."""

from __future__ import annotations

import logging
import time

from nats.js import JetStreamContext

from gateway.errors import Conflict, Unavailable
from gateway.projection.view import JobView
from shared import subjects, wire
from shared.clock import now_s

PUBLISH_TIMEOUT_S = 5.0
log = logging.getLogger("trainyard.gateway")


class JetStreamWrites:
    """Whether the gateway's writes to JetStream go through (its events and commands, the
    scheduler lease's renewals every couple of seconds): the first failure since the last
    success, for /health. nats-server keeps a stream that hit a write error (a full disk)
    unwritable until it restarts; publishes to it time out, and this is where that shows."""

    def __init__(self) -> None:
        self.failing_since_s: float | None = None
        self.error = ""

    def failed(self, exc: BaseException) -> None:
        if self.failing_since_s is None:
            self.failing_since_s = now_s()
            log.warning("a JetStream write failed: %s", exc or type(exc).__name__)
        self.error = str(exc) or type(exc).__name__

    def succeeded(self) -> None:
        if self.failing_since_s is not None:
            log.info("JetStream writes go through again")
        self.failing_since_s = None

    def health(self) -> str:
        if self.failing_since_s is None:
            return "ok"
        since = time.strftime("%H:%M:%S", time.localtime(self.failing_since_s))
        return (f"writes failing since {since}: {self.error} (nats-server's log says why; after a full "
                "disk its streams take writes again only once it restarts)")


class EventWriter:
    def __init__(self, js: JetStreamContext, view: JobView, ryw_timeout_s: float, writes: JetStreamWrites) -> None:
        self.js = js
        self.view = view
        self.ryw_timeout_s = ryw_timeout_s
        self.writes = writes

    async def publish(self, message: wire.Message, *, host: str | None = None, unique: object = None) -> int:
        """Publish once; the stream sequence, or Unavailable (the caller's one error policy)."""
        env = wire.envelope(message, host=host, unique=unique)
        try:
            ack = await self.js.publish(env.subject, env.payload, headers=env.headers, timeout=PUBLISH_TIMEOUT_S)
            squattable = ack.stream == subjects.JOB_STREAM  # hosts publish there; never on commands
            if ack.duplicate and squattable and not await self._ours(ack.stream, ack.seq, env.subject):
                # Its id was taken by a message on another subject (a host's credentials may
                # publish any id on its own subjects): write it again under a fresh id, so that
                # nobody can void a gateway write by squatting on the id it will use.
                log.warning("message id %s was taken on another subject; publishing again", env.msg_id)
                fresh = wire.envelope(message, host=host, unique=f"{unique}:{wire.nonce()}")
                ack = await self.js.publish(fresh.subject, fresh.payload, headers=fresh.headers,
                                            timeout=PUBLISH_TIMEOUT_S)
        except Exception as exc:
            self.writes.failed(exc)
            raise Unavailable(f"could not record the request in JetStream: {exc}") from None
        self.writes.succeeded()
        return ack.seq

    async def _ours(self, stream: str, seq: int, subject: str) -> bool:
        """Whether the message a duplicate ack points at was published on our subject."""
        stored = await self.js.get_msg(stream, seq)
        return stored.subject == subject

    async def publish_checked(self, message: wire.Message, *, unique: object = None) -> int:
        """publish_and_wait, then a 409 in the state machine's words if the projector refused
        the event (the job moved on between the caller's look and the write)."""
        seq = await self.publish_and_wait(message, unique=unique)
        if (why := self.view.refusals.get(seq)) is not None:
            raise Conflict(why)
        return seq

    async def publish_and_wait(self, message: wire.Message, *, unique: object = None) -> int:
        """Publish a gateway event of the job stream, then wait until the projection has it."""
        seq = await self.publish(message, unique=unique)
        try:
            await self.view.wait_applied(subjects.JOB_STREAM, seq, self.ryw_timeout_s)
        except TimeoutError:
            pass  # recorded; the projection will show it shortly
        return seq
