"""The Litestar application: routes of the main API, mapped onto the service layer."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Litestar, Request, Response, delete, get, post
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, YamlRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.params import Parameter
from litestar.response import Stream
from litestar.types import Guard

from gateway import schemas as views
from gateway.api.auth import TokenStore, caller_name, caller_role, make_auth_guard
from gateway.api.cluster import cluster_routes
from gateway.api.errors import (
    document_errors,
    http_error_handler,
    service_error_handler,
    unexpected_error_handler,
)
from gateway.api.files import files_routes
from gateway.api.join import join_routes
from gateway.api.live import stream_routes
from gateway.api.openapi import body_operation
from gateway.api.params import csv_list as _csv
from gateway.api.params import log_filters
from gateway.api.params import since_seconds as _since
from gateway.api.prometheus import PrometheusEndpoint
from gateway.api.seed000 import seed000_router
from gateway.errors import InvalidField, ServiceError, decode_body
from gateway.read.metric_query import MetricQuery
from gateway.read.queries import LogFilter
from gateway.read.sql import SqlRequest, encode_result
from gateway.runtime import GatewayRuntime
from gateway.web.routes import DocsPage, web_routes
from shared.jobspec import JobRequest
from shared.jobstate import JobStatus

PREFIX = "/api/v1/training"

Limit = Annotated[int, Parameter(ge=1, le=10_000)]
# Lines in one page of GET .../logs (next_after_seq pages on; logs.txt streams any length).
MAX_LOG_LINES = 100_000
# A whole series in one answer: 10M points of a long run is ~300 MB of JSON as columns.
MAX_METRIC_POINTS = 10_000_000
# Sequence numbers, steps and attempts fit DuckDB's BIGINT; beyond is not a number anyone means.
Seq = Annotated[int | None, Parameter(ge=-1, le=2**62)]
Step = Annotated[int | None, Parameter(ge=-(2**62), le=2**62)]
Attempt = Annotated[int | None, Parameter(ge=0, le=1_000_000)]


class StopRequest(msgspec.Struct, forbid_unknown_fields=True):
    force: bool = False
    grace_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] | None = None


_stop_decoder = msgspec.json.Decoder(StopRequest)


class CheckpointRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of export and resume: which checkpoint (path or name); default the latest."""

    checkpoint: Annotated[str, msgspec.Meta(max_length=4096)] | None = None


_checkpoint_decoder = msgspec.json.Decoder(CheckpointRequest)
_sql_decoder = msgspec.json.Decoder(SqlRequest)

def create_app(runtime: GatewayRuntime, tokens: TokenStore | None) -> Litestar:
    requires = make_auth_guard(tokens)
    viewer: list[Guard] = [requires("viewer")]
    operator: list[Guard] = [requires("operator")]
    admin: list[Guard] = [requires("admin")]

    prometheus = PrometheusEndpoint(runtime)

    def svc():
        return runtime.service

    def owner(job_id: str, request: Request) -> str:
        """The caller, once it is known to be allowed to act on the job."""
        svc().check_owner(job_id, caller_role(request), caller_name(request))
        return caller_name(request)

    @post(f"{PREFIX}/jobs", guards=operator, status_code=201, operation_class=body_operation(
        JobRequest, "A job: `trainer` picks the shape (command, hf, swift, diffusion-pipe). Seed 002's "
        "body without `trainer` but with `model_path`/`data_path` is a swift job. Unknown fields: 422."))
    async def create_job(request: Request) -> views.SubmitResponse:
        body = await request.body()
        return await svc().submit(body, role=caller_role(request), user=caller_name(request))

    @get(f"{PREFIX}/jobs", guards=viewer)
    async def list_jobs(
        request: Request, status: str | None = None, trainer: str | None = None, host: str | None = None,
        q: Annotated[str | None, Parameter(max_length=200)] = None,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 50,
        offset: Annotated[int, Parameter(ge=0, le=10_000_000)] = 0,
        gpu_id: Annotated[int | None, Parameter(ge=0, le=1023)] = None,
        priority: Annotated[int | None, Parameter(ge=0, le=10)] = None,
        cursor: Annotated[str | None, Parameter(pattern=r"^c\d{1,19}$")] = None,
        submitted_by: Annotated[str | None, Parameter(max_length=64, description="a token's name; me: yours")] = None,
        array: Annotated[str | None, Parameter(max_length=80, description="the jobs of this array or sweep")] = None,
    ) -> views.JobList:
        if submitted_by == "me":
            submitted_by = caller_name(request)
        statuses = _csv(status, "status")
        unknown = [s for s in statuses if s not in JobStatus.__members__.values()]
        if unknown:
            raise InvalidField(f"unknown status {unknown[0]!r}; one of: {', '.join(JobStatus)}", field="status")
        return await svc().list_jobs(status=statuses, trainer=trainer, host=host, q=q,
                                     limit=limit, offset=offset, gpu_id=gpu_id, priority=priority,
                                     before_seq=int(cursor[1:]) if cursor else None, submitted_by=submitted_by,
                                     array=array)

    @get(f"{PREFIX}/jobs/{{job_id:str}}", guards=viewer)
    async def job_detail(job_id: str, request: Request) -> views.JobDetail:
        return await svc().detail(job_id, role=caller_role(request), user=caller_name(request))

    @get(f"{PREFIX}/jobs/{{job_id:str}}/status", guards=viewer)
    async def job_status(job_id: str) -> views.JobStatusView:
        return svc().status_view(job_id)

    @get(f"{PREFIX}/jobs/{{job_id:str}}/progress", guards=viewer)
    async def job_progress(job_id: str) -> views.ProgressView:
        return await svc().progress(job_id)

    @get(f"{PREFIX}/jobs/{{job_id:str}}/metrics", guards=viewer)
    async def job_metrics(
        job_id: str, name: str | None = None, metric: str | None = None,
        type: Annotated[str, Parameter(pattern="^(step|epoch)$")] = "step",
        limit: Annotated[int, Parameter(ge=1, le=MAX_METRIC_POINTS,
                                        description="per series, its latest points")] = 1000,
        format: Annotated[str, Parameter(pattern="^(points|columns)$", description=(
            "points: a list of objects; columns: per series one array per field (several times faster)"))] = "points",
        fields: Annotated[str | None, Parameter(description=(
            "format=columns: which fields, a comma list of attempt, step, epoch, value, ts_s (default all)"))] = None,
        step_min: Step = None, step_max: Step = None,
        downsample: Annotated[int | None, Parameter(ge=1, le=100_000)] = None,
        attempt: Annotated[str | None, Parameter(pattern="^(all|[0-9]{1,7})$",
                                                 description="an attempt, or all (default: the latest)")] = None,
    ) -> views.MetricSeries:
        state = svc().state(job_id)
        which = None if attempt == "all" else int(attempt) if attempt is not None else state.attempt
        chosen = tuple(_csv(fields, "fields")) or views.METRIC_FIELDS
        if unknown := [f for f in chosen if f not in views.METRIC_FIELDS]:
            raise InvalidField(f"unknown field {unknown[0]!r}; fields are {', '.join(views.METRIC_FIELDS)}",
                               field="fields")
        query = MetricQuery(names=_csv(name, "name") + _csv(metric, "metric"), by=type, limit=limit,
                            step_min=step_min, step_max=step_max, downsample=downsample, attempt=which,
                            fields=chosen)
        if format == "columns":
            columns, left_out = await svc().reader.metric_columns(job_id, query)
            return views.MetricSeries(job_id=job_id, type=type, series=columns, format=format, left_out=left_out)
        points, left_out = await svc().reader.metrics(job_id, query)
        return views.MetricSeries(job_id=job_id, type=type, series=points, left_out=left_out)

    @get(f"{PREFIX}/jobs/{{job_id:str}}/gpus", guards=viewer)
    async def job_gpus(
        job_id: str, attempt: Attempt = None,
        points: Annotated[int, Parameter(ge=1, le=10_000, description="at most so many samples per GPU")] = 500,
    ) -> views.JobGpus:
        svc().state(job_id)
        gpus = await svc().reader.job_gpus(job_id, attempt=attempt, points=points)
        return views.JobGpus(job_id=job_id, mean_utilization_pct=runtime.projector.gpu_utilisation_mean(job_id),
                             gpus=gpus)

    @get(f"{PREFIX}/jobs/{{job_id:str}}/logs", guards=viewer)
    async def job_logs(
        job_id: str, type: str = "all", level: str | None = None,
        tail: Annotated[int | None, Parameter(ge=1, le=MAX_LOG_LINES)] = None,
        limit: Annotated[int | None, Parameter(ge=1, le=MAX_LOG_LINES, description="default: tail, else 1000")] = None,
        since: str | None = None,
        after_seq: Seq = None,
        q: Annotated[str | None, Parameter(max_length=200)] = None, attempt: Attempt = None,
    ) -> views.LogPage:
        """A page of log lines: the latest `limit` (or `tail`) lines, as seed 002 answered, or,
        from `after_seq` (-1: the first line) or `since`, the next `limit` lines. The whole log,
        however long, as text: GET .../logs.txt."""
        svc().state(job_id)
        kind, min_level = log_filters(type, level)
        if tail is None and after_seq is None and since is None:
            tail = limit or 1000
        chosen = LogFilter(kind=kind, min_level=min_level, attempt=attempt, since_s=_since(since),
                           after_seq=after_seq, q=q)
        lines = await svc().logs(job_id, chosen, tail=tail, limit=limit or tail or 1000)
        return views.LogPage(job_id=job_id, lines=lines,
                             next_after_seq=lines[-1].seq if lines else after_seq)

    @get(f"{PREFIX}/jobs/{{job_id:str}}/logs.txt", guards=viewer, media_type="text/plain; charset=utf-8")
    async def job_log_text(
        job_id: str, type: str = "all", level: str | None = None,
        tail: Annotated[int | None, Parameter(ge=1, le=2**62)] = None, attempt: Attempt = None,
    ) -> Stream:
        """The whole log as plain text, a line each, streamed (millions of lines in constant
        memory), or its last `tail` lines: what `trainyard logs JOB` prints."""
        svc().state(job_id)
        kind, min_level = log_filters(type, level)
        chosen = LogFilter(kind=kind, min_level=min_level, attempt=attempt)
        return Stream(svc().log_text(job_id, chosen, tail), media_type="text/plain; charset=utf-8")

    @get(f"{PREFIX}/jobs/{{job_id:str}}/events", guards=viewer)
    async def job_events(job_id: str, request: Request, limit: Limit = 1000,
                         after_seq: Annotated[int | None, Parameter(ge=0, le=2**62)] = None,
                         ) -> list[views.EventView]:
        return await svc().events(job_id, limit, after_seq, role=caller_role(request), user=caller_name(request))

    @post(f"{PREFIX}/jobs/{{job_id:str}}/stop", guards=operator, status_code=200,
          operation_class=body_operation(StopRequest, "Optional; default: graceful, the job's grace period.",
                                           required=False))
    async def stop_job(job_id: str, request: Request) -> views.StopResponse:
        stop = decode_body(_stop_decoder, await request.body(), StopRequest())
        if members := svc().array_members(job_id):  # the id of an array or sweep: all of its jobs
            return await svc().stop_array(job_id, members, force=stop.force, grace_s=stop.grace_s,
                                          role=caller_role(request), user=caller_name(request))
        return await svc().stop(job_id, force=stop.force, grace_s=stop.grace_s, user=owner(job_id, request))

    @post(f"{PREFIX}/jobs/{{job_id:str}}/start", guards=operator, status_code=200)
    async def start_job(job_id: str, request: Request) -> views.StopResponse:
        """Release a held job; for a queued one, ask for a scheduling pass now."""
        return await svc().start(job_id, user=owner(job_id, request))

    @post(f"{PREFIX}/jobs/{{job_id:str}}/retry", guards=operator, status_code=200)
    async def retry_job(job_id: str, request: Request) -> views.StopResponse:
        """A failed, lost or stopped job back to the queue as a new attempt."""
        return await svc().retry(job_id, user=owner(job_id, request))

    @post(f"{PREFIX}/jobs/{{job_id:str}}/resume", guards=operator, status_code=200,
          operation_class=body_operation(CheckpointRequest, "Optional; default: the latest checkpoint.",
                                           required=False))
    async def resume_job(job_id: str, request: Request) -> views.StopResponse:
        """A new attempt from the latest checkpoint, or `{"checkpoint": "checkpoint-50"}`."""
        req = decode_body(_checkpoint_decoder, await request.body(), CheckpointRequest())
        return await svc().resume(job_id, req.checkpoint, user=owner(job_id, request))

    @get(f"{PREFIX}/jobs/{{job_id:str}}/checkpoints", guards=viewer)
    async def job_checkpoints(job_id: str) -> list[dict[str, Any]]:
        return await svc().checkpoints(job_id)

    @delete(f"{PREFIX}/jobs/{{job_id:str}}", guards=operator, status_code=204)
    async def delete_job(job_id: str, request: Request) -> None:
        """204. The job leaves every view; its events stay. 409 while it is active."""
        await svc().delete(job_id, user=owner(job_id, request))

    @post(f"{PREFIX}/jobs/{{job_id:str}}/export", guards=operator, status_code=200,
          operation_class=body_operation(CheckpointRequest, "Optional; default: the latest checkpoint.",
                                           required=False))
    async def export_job(job_id: str, request: Request) -> views.ExportResponse:
        """The job's export step (swift: merge the LoRA of the latest or a named checkpoint);
        its progress and result path appear under `exports` in the job's detail."""
        req = decode_body(_checkpoint_decoder, await request.body(), CheckpointRequest())
        return await svc().export(job_id, req.checkpoint, user=owner(job_id, request))

    @post("/api/v1/sql", guards=admin, status_code=200,
          operation_class=body_operation(SqlRequest, "One read-only statement and its limits."))
    async def run_sql(request: Request) -> Response[bytes]:
        """Read-only SQL over the projection (schema in the README): one SELECT/WITH/EXPLAIN,
        `limit` rows at most (default 1,000, max 10,000), `timeout_s` (default 10, max 60)."""
        req = decode_body(_sql_decoder, await request.body(), None)
        if req is None:
            raise InvalidField("a body {\"sql\": \"SELECT ...\"} is required", field="sql")
        result = await runtime.sql.run(req)
        return Response(encode_result(result), media_type="application/json")

    @get([f"{PREFIX}/health", "/health"], exclude_from_auth=True)
    async def health() -> views.Health:
        return await runtime.health()

    return Litestar(
        route_handlers=[*document_errors([create_job, list_jobs, job_detail, job_status, job_progress, job_metrics,
                        job_gpus, job_logs, job_log_text, job_events, stop_job, start_job, delete_job, export_job,
                        retry_job, resume_job, job_checkpoints, run_sql, health, prometheus.route(viewer),
                        *cluster_routes(runtime, PREFIX, viewer=viewer, operator=operator, admin=admin),
                        *join_routes(runtime, PREFIX),
                        *files_routes(runtime, PREFIX, viewer=viewer, operator=operator),
                        *stream_routes(runtime, PREFIX, viewer=viewer)]),
                        seed000_router(runtime, "/api/v1", viewer=viewer, operator=operator),
                        *web_routes(runtime, PREFIX, viewer=viewer)],
        exception_handlers={
            ServiceError: service_error_handler,
            HTTPException: http_error_handler,
            Exception: unexpected_error_handler,
        },
        request_max_body_size=1024 * 1024,
        middleware=[prometheus.timer],
        openapi_config=OpenAPIConfig(
            title="trainyard", version="0.1.0", path="/docs",
            # The document and nothing that loads scripts from a CDN (an offline cluster cannot
            # reach one): /docs/openapi.json gives JSON, /docs/openapi.yaml YAML, and /docs the
            # page that renders it with the gateway's own script (gateway/web).
            render_plugins=[DocsPage(), JsonRenderPlugin(path="/openapi.json"), YamlRenderPlugin(path="/openapi.yaml")],
            components=Components(security_schemes={
                "BearerToken": SecurityScheme(type="http", scheme="bearer",
                                              description="an API token: trainyard token create"),
            }),
            security=[{"BearerToken": []}],
        ),
        on_startup=[runtime.start],
        on_shutdown=[runtime.stop],
        debug=False,
    )
