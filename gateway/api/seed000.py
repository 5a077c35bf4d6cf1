"""Seed 000's routes (the diffusion-pipe training API), thin over the same service layer.

Same paths, parameters and codes as seed 000, so its users' scripts keep working; answers in its
envelope `{code, message, data, timestamp}`, errors too. Its status names: `completed` for
`succeeded`. `POST /training/start` is a `diffusion-pipe` job pinned to `gpu_id` with
`if_busy: reject`: a busy GPU is a 409, as it was.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.exceptions import HTTPException
from litestar.params import Parameter
from litestar.types import Guard

from gateway import schemas as views
from gateway.api.auth import caller_name, caller_role
from gateway.api.errors import parameter_error
from gateway.api.openapi import body_operation
from gateway.api.params import csv_list as _csv
from gateway.api.params import log_filters, since_seconds
from gateway.errors import InvalidField, ServiceError, decode_body
from gateway.read.metric_query import MetricQuery
from gateway.read.queries import LogFilter
from gateway.runtime import GatewayRuntime
from shared.jobstate import JobStatus

TO_SEED = {"succeeded": "completed"}
FROM_SEED = {"completed": "succeeded"}


class Envelope(msgspec.Struct):
    code: int
    message: str
    data: Any
    timestamp: int


def envelope(data: Any, code: int = 200, message: str = "success") -> Response[Envelope]:
    return Response(Envelope(code, message, data, int(time.time())), status_code=code)


def _error(status: int, message: str) -> Response[Envelope]:
    return Response(Envelope(status, message, None, int(time.time())), status_code=status)


def service_error(_: Request, exc: ServiceError) -> Response[Envelope]:
    message = f"{exc.field}: {exc.detail}" if exc.field and exc.field not in exc.detail else exc.detail
    # Seed 000 answered 400 for every bad parameter; trainyard keeps that on these routes.
    return _error(400 if exc.status_code == 422 else exc.status_code, message)


def http_error(_: Request, exc: HTTPException) -> Response[Envelope]:
    parameter = parameter_error(exc)  # seed 000 answered 400 for every bad parameter
    return _error(exc.status_code, parameter[1] if parameter else str(exc.detail))


def seed_status(status: str) -> str:
    return TO_SEED.get(status, status)


class StartRequest(msgspec.Struct, forbid_unknown_fields=True):
    model_type: str
    dataset: dict[str, Any]
    config: dict[str, Any] = {}
    gpu_id: Annotated[int, msgspec.Meta(ge=0, le=1023)] | None = None
    description: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    priority: Annotated[int, msgspec.Meta(ge=0, le=10)] = 5


class StopRequest(msgspec.Struct, forbid_unknown_fields=True):
    force: bool = False


_start = msgspec.json.Decoder(StartRequest)
_stop = msgspec.json.Decoder(StopRequest)


def seed000_router(runtime: GatewayRuntime, prefix: str, *, viewer: list[Guard], operator: list[Guard]) -> Router:
    def svc():
        return runtime.service

    @post("/training/start", guards=operator, status_code=201,
          operation_class=body_operation(StartRequest, "Seed 000's start body."))
    async def start(request: Request) -> Response[Envelope]:
        req: StartRequest = decode_body(_start, await request.body())
        body = msgspec.json.encode({
            "trainer": "diffusion-pipe", "model_type": req.model_type, "dataset": req.dataset,
            "config": req.config, "description": req.description, "priority": req.priority,
            **({"gpu_id": req.gpu_id, "if_busy": "reject"} if req.gpu_id is not None else {}),
        })
        made = await svc().submit(body, role=caller_role(request), user=caller_name(request))
        return envelope({"task_id": made.job_id, "status": seed_status(made.status),
                         "gpu_id": req.gpu_id, "queue_position": made.queue_position}, 201,
                        "training task created")

    @post("/training/stop/{task_id:str}", guards=operator, status_code=200,
          operation_class=body_operation(StopRequest, "Optional.", required=False))
    async def stop(task_id: str, request: Request) -> Response[Envelope]:
        req: StopRequest = decode_body(_stop, await request.body(), StopRequest())
        svc().check_owner(task_id, caller_role(request), caller_name(request))
        done = await svc().stop(task_id, force=req.force, grace_s=None, user=caller_name(request))
        return envelope({"task_id": task_id, "status": seed_status(done.status)}, message=done.message)

    @get("/training/list", guards=viewer)
    async def task_list(
        status: str | None = None, gpu_id: Annotated[int | None, Parameter(ge=0, le=1023)] = None,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 20,
        offset: Annotated[int, Parameter(ge=0, le=10_000_000)] = 0,
    ) -> Response[Envelope]:
        statuses = []
        for one in _csv(status, "status"):  # one status, or a comma list as the main API takes
            ours = FROM_SEED.get(one, one)
            if ours not in JobStatus.__members__.values():
                raise InvalidField(f"unknown status {one!r}", field="status")
            statuses.append(ours)
        page = await svc().reader.list_jobs(status=statuses, trainer=None, host=None, q=None,
                                            limit=limit, offset=offset, gpu_id=gpu_id)
        tasks = [{"task_id": j.job_id, "status": seed_status(j.status), "trainer": j.trainer,
                  "gpu_id": j.gpu_ids[0] if j.gpu_ids else None, "description": j.description,
                  "created_at": j.submitted_s, "started_at": j.started_s, "finished_at": j.finished_s}
                 for j in page.jobs]
        return envelope({"tasks": tasks, "total": page.total, "limit": limit, "offset": offset})

    @get("/training/{task_id:str}", guards=viewer)
    async def task_detail(task_id: str, request: Request) -> Response[Envelope]:
        d: views.JobDetail = await svc().detail(task_id, role=caller_role(request), user=caller_name(request))
        return envelope({
            "task_id": d.job_id, "status": seed_status(d.status), "gpu_id": d.gpu_ids[0] if d.gpu_ids else None,
            "gpu_ids": d.gpu_ids, "host": d.host, "model_type": d.spec.get("model_type"),
            "description": d.description, "config": d.spec.get("config", d.spec), "dataset": d.spec.get("dataset"),
            "progress": _progress(d.progress), "metrics": d.progress.latest_metrics if d.progress else {},
            "system_status": {"pid": d.pid, "exit_code": d.exit_code, "signal": d.signal, "reason": d.reason},
            "checkpoints": d.checkpoints, "log_path": d.stdout_path, "run_dir": d.run_dir,
            "created_at": d.submitted_s, "started_at": d.started_s, "finished_at": d.finished_s,
        })

    @get("/training/{task_id:str}/progress", guards=viewer)
    async def task_progress(task_id: str) -> Response[Envelope]:
        return envelope(_progress(await svc().progress(task_id)))

    @get("/training/{task_id:str}/metrics", guards=viewer)
    async def task_metrics(
        task_id: str, metric: str = "loss",
        type: Annotated[str, Parameter(pattern="^(step|epoch)$")] = "step",
        limit: Annotated[int, Parameter(ge=1, le=10_000)] = 1000,
    ) -> Response[Envelope]:
        latest = svc().state(task_id).attempt
        series, _ = await svc().reader.metrics(task_id, MetricQuery(names=[metric], by=type, limit=limit,
                                                                    attempt=latest))
        points = [{"step": p.step, "epoch": p.epoch, "value": p.value, "timestamp": p.ts_s}
                  for p in series.get(metric, [])]
        return envelope({"task_id": task_id, "metric": metric, "type": type, "data": points})

    @get("/training/{task_id:str}/logs", guards=viewer)
    async def task_logs(
        task_id: str, type: str = "all", level: str | None = None,
        tail: Annotated[int | None, Parameter(ge=1, le=10_000)] = None, since: str | None = None,
        limit: Annotated[int, Parameter(ge=1, le=10_000)] = 1000,
    ) -> Response[Envelope]:
        svc().state(task_id)
        kind, min_level = log_filters(type, level)
        chosen = LogFilter(kind=kind, min_level=min_level, since_s=since_seconds(since))
        lines = await svc().logs(task_id, chosen, tail=tail, limit=limit)
        return envelope({"task_id": task_id, "logs": [
            {"timestamp": ln.ts_s, "level": ln.level, "type": ln.kind, "message": ln.text} for ln in lines]})

    return Router(
        path=prefix,
        route_handlers=[start, stop, task_list, task_detail, task_progress, task_metrics, task_logs],
        exception_handlers={ServiceError: service_error, HTTPException: http_error},
        tags=["seed 000 compatibility"],
    )


def _progress(p: views.ProgressView | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {"status": seed_status(p.status), "current_step": p.step, "total_steps": p.total_steps,
            "current_epoch": p.epoch, "total_epochs": p.total_epochs, "progress_percent": p.percent,
            "eta_seconds": p.eta_s, "speed_steps_per_second": p.rate_steps_s, "estimated": p.estimated,
            "metrics": p.latest_metrics}
