"""Live streams over SSE: a job's log lines and its progress, until the job ends.

Each stream waits on the projector's condition (woken by every applied batch), so a line is
sent as soon as it is queryable, with no polling interval. Log events carry the line's `seq` as
their SSE id: a client that reconnects with `Last-Event-ID` (or `?after_seq=`) gets exactly the
lines after it. A comment every 15 s keeps proxies from closing an idle stream. The stream ends
with an `end` event once the job has ended and every line has been sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import msgspec
from litestar import Request, get
from litestar.handlers import HTTPRouteHandler
from litestar.params import Parameter
from litestar.response import ServerSentEvent
from litestar.response.sse import ServerSentEventMessage
from litestar.types import Guard

from gateway.errors import InvalidField
from gateway.params import log_filters
from gateway.runtime import GatewayRuntime

KEEPALIVE_S = 15.0
PAGE = 1000


def stream_routes(runtime: GatewayRuntime, prefix: str, *, viewer: list[Guard]) -> list[HTTPRouteHandler]:
    def svc():
        return runtime.service

    async def changed(since: dict[str, int]) -> tuple[dict[str, int], ServerSentEventMessage | None]:
        """Wait until the projector applies anything new; after KEEPALIVE_S of nothing, hand
        back a keep-alive comment to send."""
        projector = runtime.projector
        try:
            await projector.wait_until(lambda: projector.applied != since, KEEPALIVE_S)
        except TimeoutError:
            pass
        now = dict(projector.applied)
        return now, (ServerSentEventMessage(comment="keep-alive") if now == since else None)

    def end(job_id: str) -> ServerSentEventMessage:
        state = runtime.projector.states.get(job_id)
        return ServerSentEventMessage(data=state.status.value if state else "deleted", event="end")

    async def end_or_wait(job_id: str, seen: dict[str, int], finished: bool,
                          ) -> tuple[dict[str, int], ServerSentEventMessage | None, bool]:
        """After a page: the `end` event if the stream is finished, else wait for the next
        change (with a keep-alive now and then). (seen, message to send, finished)."""
        if finished:
            return seen, end(job_id), True
        seen, keepalive = await changed(seen)
        return seen, keepalive, False

    @get(f"{prefix}/jobs/{{job_id:str}}/logs/stream", guards=viewer)
    async def follow_logs(
        job_id: str, request: Request, type: str = "all", level: str | None = None,
        attempt: int | None = None, after_seq: Annotated[int | None, Parameter(ge=-1)] = None,
    ) -> ServerSentEvent:
        """Follow the job's log lines (SSE `log` events, id = the line's seq), from the start or
        after `Last-Event-ID` / `after_seq`; filters `type` and `level`; ends with `end`."""
        state = svc().state(job_id)
        kind, min_level = log_filters(type, level)
        last_id = request.headers.get("last-event-id")
        if last_id is not None:
            try:
                after_seq = int(last_id)
            except ValueError:
                raise InvalidField("Last-Event-ID must be a line's seq", field="Last-Event-ID") from None
        which = attempt if attempt is not None else max(state.attempt, 1)

        async def lines() -> AsyncIterator[ServerSentEventMessage]:
            after = after_seq if after_seq is not None else -1
            seen = dict(runtime.projector.applied)
            while True:
                page = await svc().reader.logs(job_id, kind=kind, min_level=min_level,
                                               tail=None, limit=PAGE, since_s=None, after_seq=after, q=None,
                                               attempt=which)
                for line in page:
                    after = line.seq
                    yield ServerSentEventMessage(data=msgspec.json.encode(line).decode(), event="log", id=line.seq)
                if len(page) == PAGE:
                    continue
                now = runtime.projector.states.get(job_id)
                # The exit is shown only once its lines are queryable: nothing is missed.
                seen, message, finished = await end_or_wait(
                    job_id, seen, now is None or now.is_terminal or now.attempt > which)
                if message:
                    yield message
                if finished:
                    return

        return ServerSentEvent(lines())

    @get(f"{prefix}/jobs/{{job_id:str}}/progress/stream", guards=viewer)
    async def follow_progress(job_id: str) -> ServerSentEvent:
        """The job's progress (SSE `progress` events with the same body as GET .../progress)
        whenever it changes; ends with `end` when the job does."""
        svc().state(job_id)

        async def updates() -> AsyncIterator[ServerSentEventMessage]:
            last: bytes | None = None
            seen = dict(runtime.projector.applied)
            while True:
                view = await svc().progress(job_id)
                body = msgspec.json.encode(view)
                if body != last:
                    last = body
                    yield ServerSentEventMessage(data=body.decode(), event="progress")
                state = runtime.projector.states.get(job_id)
                seen, message, finished = await end_or_wait(job_id, seen, state is None or state.is_terminal)
                if message:
                    yield message
                if finished:
                    return

        return ServerSentEvent(updates())

    return [follow_logs, follow_progress]
