"""Live streams over SSE: a job's log lines and its progress, until the job ends.

Each stream waits on the projector (`wait_until`), with no polling interval. A log stream is
woken whenever the projection moves: small batches come to it from memory as soon as they are
decoded, before they are committed (gateway/projection/live_logs.py), others by a query once they are; a
follower queries DuckDB only when lines it has not examined were committed. A progress stream is
woken by commits of the job stream, where progress and metrics travel. Log events carry the
line's `seq` as their SSE id: a client that reconnects with `Last-Event-ID` (or `?after_seq=`)
gets exactly the lines after it. A comment every 15 s keeps proxies from closing an idle stream.
A stream ends with an `end` event once the job has ended and every line has been sent.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from typing import Annotated

import msgspec
from litestar import Request, get
from litestar.handlers import HTTPRouteHandler
from litestar.params import Parameter
from litestar.response import ServerSentEvent
from litestar.response.sse import ServerSentEventMessage
from litestar.types import Guard

from gateway.api.params import log_filters
from gateway.errors import InvalidField
from gateway.read.queries import LogFilter, levels_from
from gateway.runtime import GatewayRuntime
from gateway.schemas import LogLine
from shared.subjects import JOB_STREAM

KEEPALIVE_S = 15.0
PAGE = 1000


_line_encoder = msgspec.json.Encoder()


def _encode_line(line: LogLine) -> str:
    return _line_encoder.encode(line).decode()


def _wanted(line: LogLine, kind: str, levels: tuple[str, ...] | None) -> bool:
    """The filters of `Reader.logs`, for lines from memory (`levels`: from `levels_from`)."""
    return (kind == "all" or line.kind == kind) and (levels is None or line.level in levels)


def stream_routes(runtime: GatewayRuntime, prefix: str, *, viewer: list[Guard]) -> list[HTTPRouteHandler]:
    def svc():
        return runtime.service

    async def changed(moved: Callable[[], bool]) -> ServerSentEventMessage | None:
        """Wait until the projection `moved`; after KEEPALIVE_S of nothing, a keep-alive
        comment to send."""
        try:
            await runtime.projector.wait_until(moved, KEEPALIVE_S)
        except TimeoutError:
            return ServerSentEventMessage(comment="keep-alive")
        return None

    def end(job_id: str) -> ServerSentEventMessage:
        state = runtime.projector.states.get(job_id)
        return ServerSentEventMessage(data=state.status.value if state else "deleted", event="end")

    @get(f"{prefix}/jobs/{{job_id:str}}/logs/stream", guards=viewer)
    async def follow_logs(
        job_id: str, request: Request, type: str = "all", level: str | None = None,
        attempt: Annotated[int | None, Parameter(ge=0, le=1_000_000)] = None,
        after_seq: Annotated[int | None, Parameter(ge=-1, le=2**62)] = None,
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
            projector = runtime.projector
            live = projector.live_logs
            levels = levels_from(min_level) if min_level else None
            after = after_seq if after_seq is not None else -1  # the last line sent
            covered = after  # every line up to here was examined (sent or filtered out)
            while True:
                looked_at = projector.version
                fresh = live.lines_after(job_id, which, covered)
                full = False
                if fresh is not None:  # decoded, maybe not committed yet: no query needed
                    page, covered = fresh, fresh[-1].seq
                    page = [line for line in page if _wanted(line, kind, levels)]
                elif (stored := live.stored_through(job_id, which)) > covered:
                    chosen = LogFilter(kind=kind, min_level=min_level, attempt=which, after_seq=after)
                    page = await svc().reader.logs(job_id, chosen, tail=None, limit=PAGE)
                    full = len(page) == PAGE
                    # `stored` was read before the query: every line up to it is examined now
                    # (a full page only up to its last line).
                    covered = max(covered, page[-1].seq if full else stored)
                else:
                    page = []
                for line in page:
                    if line.seq > after:  # a line committed during the query may come again
                        after = line.seq
                        yield ServerSentEventMessage(data=_encode_line(line), event="log", id=line.seq)
                covered = max(covered, after)
                if full:
                    continue
                now = projector.states.get(job_id)
                # The exit is shown only once its lines are committed; the stream ends once every
                # committed line was examined: nothing is missed.
                if now is None or now.is_terminal or now.attempt > which:
                    if live.stored_through(job_id, which) > covered:
                        continue
                    yield end(job_id)
                    return
                keepalive = await changed(functools.partial(_moved_from, lambda: projector.version, looked_at))
                if keepalive:
                    yield keepalive

        return ServerSentEvent(lines())

    @get(f"{prefix}/jobs/{{job_id:str}}/progress/stream", guards=viewer)
    async def follow_progress(job_id: str) -> ServerSentEvent:
        """The job's progress (SSE `progress` events with the same body as GET .../progress)
        whenever it changes; ends with `end` when the job does."""
        svc().state(job_id)

        async def updates() -> AsyncIterator[ServerSentEventMessage]:
            projector = runtime.projector
            last: bytes | None = None
            while True:
                # Progress and metrics are job-stream events: only its commits can change them.
                looked_at = projector.applied[JOB_STREAM]
                view = await svc().progress(job_id)
                body = msgspec.json.encode(view)
                if body != last:
                    last = body
                    yield ServerSentEventMessage(data=body.decode(), event="progress")
                state = projector.states.get(job_id)
                if state is None or state.is_terminal:
                    yield end(job_id)
                    return
                job_stream_seq = functools.partial(projector.applied.__getitem__, JOB_STREAM)
                keepalive = await changed(functools.partial(_moved_from, job_stream_seq, looked_at))
                if keepalive:
                    yield keepalive

        return ServerSentEvent(updates())

    return [follow_logs, follow_progress]


def _moved_from(now: Callable[[], int], looked_at: int) -> bool:
    """The projection counter `now` has moved past what was looked at."""
    return now() != looked_at
