"""The dashboard and the API's docs page, served by the gateway itself: no CDN, no build step.

`/ui/` is one page (static/index.html, app.js, app.css: plain, written here, about 34 KB in
all). It signs in with an API token kept for the browser session, taken from the URL fragment
that `trainyard up` prints (`/ui/#token=...`: a fragment never reaches a server or its logs).
Its data comes from the public API with the caller's token, so roles hold exactly as there;
this module adds only what the page needs beyond it: who the caller is, a stream that says when
jobs or hosts moved (the page re-reads what it shows then, instead of polling), and the GPUs'
recent history. `/docs` (DocsPage) renders the OpenAPI document with static/docs.js.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import duckdb
import msgspec
from litestar import Request, get
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.plugins import OpenAPIRenderPlugin
from litestar.params import Parameter
from litestar.response import File, Redirect, ServerSentEvent
from litestar.response.sse import ServerSentEventMessage
from litestar.router import Router
from litestar.static_files import create_static_files_router
from litestar.types import Guard

from gateway.api.auth import caller_name, caller_role
from gateway.runtime import GatewayRuntime
from shared.subjects import HOST_STREAM, JOB_STREAM

STATIC = Path(__file__).resolve().parent / "static"
# The page runs only its own script and talks only to its own origin; nothing may frame it.
PAGE_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
KEEPALIVE_S = 15.0
# A stream tells of moves at most this often: a busy cluster moves many times a second, and a
# page re-reading its table more often than this would only load the gateway.
MIN_GAP_S = 0.5


class Caller(msgspec.Struct):
    name: str
    role: str


class GpuSeries(msgspec.Struct):
    host: str
    gpu_index: int
    ts_s: list[float]
    utilization_pct: list[float | None]
    memory_used_mb: list[float | None]


class GpuHistory(msgspec.Struct):
    window_s: float
    gpus: list[GpuSeries]


def web_routes(runtime: GatewayRuntime, prefix: str, *, viewer: list[Guard]) -> list[HTTPRouteHandler | Router]:
    @get("/", include_in_schema=False)
    async def root() -> Redirect:
        return Redirect("/ui/")

    @get(["/ui", "/ui/"], include_in_schema=False)
    async def dashboard() -> File:
        return File(STATIC / "index.html", content_disposition_type="inline", headers=PAGE_HEADERS,
                    media_type="text/html; charset=utf-8")

    @get(f"{prefix}/whoami", guards=viewer)
    async def whoami(request: Request) -> Caller:
        """The caller's token name and role (the dashboard shows only the actions it allows)."""
        return Caller(name=caller_name(request), role=caller_role(request))

    @get(f"{prefix}/changes/stream", guards=viewer)
    async def changes() -> ServerSentEvent:
        """SSE: a `jobs` event when jobs moved (submitted, placed, progressed, ended), a `hosts`
        event when a heartbeat arrived; at most one per half second of each."""
        return ServerSentEvent(_moves(runtime))

    @get(f"{prefix}/gpus/history", guards=viewer)
    async def gpu_history(
        window_s: Annotated[float, Parameter(ge=60, le=7 * 86400)] = 3600.0,
        points: Annotated[int, Parameter(ge=10, le=2000)] = 120,
    ) -> GpuHistory:
        """Each GPU's utilisation and memory over the last `window_s`, averaged into `points`
        buckets (from the heartbeats' `gpu_samples`)."""
        since = time.time() - window_s
        bucket = window_s / points

        def fetch(c: duckdb.DuckDBPyConnection) -> list[tuple]:
            return c.execute(
                "SELECT host, gpu_index, max(ts_s), avg(utilization_pct), avg(memory_used_mb) FROM gpu_samples "
                "WHERE ts_s >= ? GROUP BY host, gpu_index, floor((ts_s - ?) / ?) ORDER BY host, gpu_index, 3",
                [since, since, bucket]).fetchall()

        rows = await runtime.service.reader.run(fetch)
        series: dict[tuple[str, int], GpuSeries] = {}
        for host, gpu, ts, util, mem in rows:
            s = series.setdefault((host, gpu), GpuSeries(host, gpu, [], [], []))
            s.ts_s.append(ts)
            s.utilization_pct.append(None if util is None else round(util, 1))
            s.memory_used_mb.append(None if mem is None else round(mem))
        return GpuHistory(window_s=window_s, gpus=list(series.values()))

    assets = create_static_files_router(path="/ui/assets", directories=[STATIC], include_in_schema=False,
                                        name="ui-assets")
    return [root, dashboard, whoami, changes, gpu_history, assets]


class DocsPage(OpenAPIRenderPlugin):
    """/docs: the page that renders the OpenAPI document with static/docs.js (Litestar's
    Redoc, Swagger and the like load their scripts from a CDN)."""

    def __init__(self) -> None:
        super().__init__(path="/")

    def render(self, request: Request, openapi_schema: dict[str, Any]) -> bytes:
        return (STATIC / "docs.html").read_bytes()


async def _moves(runtime: GatewayRuntime) -> AsyncIterator[ServerSentEventMessage]:
    projector = runtime.projector
    seen = {JOB_STREAM: -1, HOST_STREAM: -1}
    names = {JOB_STREAM: "jobs", HOST_STREAM: "hosts"}
    while True:
        moved = [stream for stream in seen if projector.applied[stream] != seen[stream]]
        for stream in moved:
            seen[stream] = projector.applied[stream]
            yield ServerSentEventMessage(event=names[stream], data=str(seen[stream]))
        if moved:
            await asyncio.sleep(MIN_GAP_S)
            continue
        try:
            await projector.wait_until(lambda: any(projector.applied[s] != seen[s] for s in seen), KEEPALIVE_S)
        except TimeoutError:
            yield ServerSentEventMessage(comment="keep-alive")
