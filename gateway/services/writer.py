"""Writes from the gateway: publish an event to JetStream, then wait (briefly) until the
projector shows it, so the client that wrote reads its own write."""

from __future__ import annotations

import msgspec
from nats.js import JetStreamContext

from gateway.errors import Unavailable
from gateway.projection.projector import Projector
from shared import events as ev
from shared import subjects


class EventWriter:
    def __init__(self, js: JetStreamContext, projector: Projector, ryw_timeout_s: float) -> None:
        self.js = js
        self.projector = projector
        self.ryw_timeout_s = ryw_timeout_s

    async def publish(self, subject: str, event: msgspec.Struct, msg_id: str) -> int:
        try:
            ack = await self.js.publish(subject, ev.encode(event), headers={"Nats-Msg-Id": msg_id}, timeout=5.0)
        except Exception as exc:
            raise Unavailable(f"could not record the request in JetStream: {exc}") from None
        return ack.seq

    async def publish_and_wait(self, subject: str, event: msgspec.Struct, msg_id: str) -> int:
        seq = await self.publish(subject, event, msg_id)
        try:
            await self.projector.wait_applied(subjects.JOB_STREAM, seq, self.ryw_timeout_s)
        except TimeoutError:
            pass  # recorded; the projection will show it shortly
        return seq
