"""`GET /metrics`: the gateway in Prometheus's text format, through `prometheus_client`.

Everything but the request latencies is read at scrape time from what the gateway holds in
memory (the projection's view, the scheduler's snapshot): a scrape costs no DuckDB query and
the numbers are as fresh as the API's. Labels stay bounded: per-job series exist only for
running jobs. A viewer token reads it (Prometheus: `authorization: {credentials: <token>}`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, cast

from litestar import Response, get
from litestar.handlers import HTTPRouteHandler
from litestar.types import ASGIApp, Guard, HTTPScope, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.clock import now_s
from shared.jobstate import JobStatus

if TYPE_CHECKING:
    from gateway.runtime import GatewayRuntime

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The API answers in about a millisecond (DESIGN §9); the buckets resolve that and its tail.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
PASS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
RUNNING = (JobStatus.RUNNING, JobStatus.STOPPING)


class GatewayCollector(Collector):
    def __init__(self, runtime: GatewayRuntime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterable[Metric]:
        projector = self.runtime.projector
        states, needs = dict(projector.states), projector.needs
        jobs = GaugeMetricFamily("trainyard_jobs", "Jobs by status and trainer", labels=["status", "trainer"])
        counts = Counter((s.status.value, needs[j].spec.trainer if j in needs else "") for j, s in states.items())
        for (status, trainer), n in sorted(counts.items()):
            jobs.add_metric([status, trainer], n)
        yield jobs
        queued = [s for s in states.values() if s.status is JobStatus.QUEUED]
        yield GaugeMetricFamily("trainyard_queue_length", "Jobs waiting in the queue", value=len(queued))
        oldest = min((s.submitted_s for s in queued), default=None)
        yield GaugeMetricFamily("trainyard_queue_oldest_wait_seconds", "How long the oldest queued job has waited",
                                value=now_s() - oldest if oldest is not None else 0.0)
        yield from self._hosts_and_gpus()
        anomalies = GaugeMetricFamily("trainyard_anomalies", "Watchdog anomalies on the jobs held, by kind",
                                      labels=["kind"])
        kinds = Counter(a.kind for found in list(projector.anomalies.values()) for a in found)
        for kind in ("nan", "stall", "idle_gpu"):
            anomalies.add_metric([kind], kinds.get(kind, 0))
        yield anomalies
        pending = GaugeMetricFamily("trainyard_projector_pending_messages",
                                    "Messages of each stream not yet in the projection", labels=["stream"])
        for stream, n in sorted(projector.pending.items()):
            pending.add_metric([stream], n)
        yield pending
        yield GaugeMetricFamily("trainyard_projector_ok", "1 while the projection is healthy and caught up",
                                value=1.0 if projector.ok else 0.0)
        yield from self._running_jobs(states, needs)

    def _hosts_and_gpus(self) -> Iterator[Metric]:
        scheduler = self.runtime.scheduler
        _, online = scheduler.snapshot()
        beats = dict(self.runtime.projector.heartbeats)
        yield GaugeMetricFamily("trainyard_hosts_online", "Hosts whose agent heartbeats", value=len(online))
        yield GaugeMetricFamily("trainyard_hosts_offline", "Hosts known but silent",
                                value=len(set(beats) - set(online)))
        gpus = GaugeMetricFamily("trainyard_gpus", "GPUs by host and state (free, busy, offline)",
                                 labels=["host", "state"])
        for host, beat in sorted(beats.items()):
            view = online.get(host)
            if view is None:
                gpus.add_metric([host, "offline"], len(beat.gpus))
                continue
            busy = len(view.busy & set(view.gpu_memory_mb))
            gpus.add_metric([host, "busy"], busy)
            gpus.add_metric([host, "free"], len(view.gpu_memory_mb) - busy)
        yield gpus
        util = GaugeMetricFamily("trainyard_gpu_utilization_percent", "GPU utilisation as last sampled",
                                 labels=["host", "gpu"])
        for host, beat in sorted(beats.items()):
            if host in online:
                for g in beat.gpus:
                    if g.utilization_pct is not None:
                        util.add_metric([host, str(g.index)], g.utilization_pct)
        yield util

    def _running_jobs(self, states: dict, needs: dict) -> Iterator[Metric]:
        projector = self.runtime.projector
        labels = ["job_id", "trainer", "host"]
        step = GaugeMetricFamily("trainyard_job_step", "A running job's latest step", labels=labels)
        percent = GaugeMetricFamily("trainyard_job_progress_percent", "A running job's progress", labels=labels)
        loss = GaugeMetricFamily("trainyard_job_loss", "A running job's latest `loss` point", labels=labels)
        for job_id, state in sorted(states.items()):
            if state.status not in RUNNING:
                continue
            names = [job_id, needs[job_id].spec.trainer if job_id in needs else "", state.host or ""]
            progress = projector.latest_progress.get(job_id)
            if progress is not None and progress.attempt == state.attempt:
                if progress.step is not None:
                    step.add_metric(names, progress.step)
                if progress.percent is not None:
                    percent.add_metric(names, progress.percent)
            latest = projector.latest_loss.get(job_id)
            if latest is not None and latest[0] == state.attempt:
                loss.add_metric(names, latest[1])
        yield from (step, percent, loss)


class RequestTimer:
    """Times each request to its response's start (a stream's first byte), labelled by the
    route's template (bounded), not its path."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.histogram = Histogram("trainyard_http_request_duration_seconds", "API requests, to the response start",
                                   ["method", "route", "status"], registry=registry, buckets=LATENCY_BUCKETS)

    def __call__(self, app: ASGIApp) -> ASGIApp:
        histogram = self.histogram

        async def timed(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            began = time.perf_counter()
            method = cast("HTTPScope", scope)["method"]

            async def timed_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    histogram.labels(method, scope.get("path_template", "?"),
                                     str(message["status"])).observe(time.perf_counter() - began)
                await send(message)

            await app(scope, receive, timed_send)

        return timed


class PrometheusEndpoint:
    def __init__(self, runtime: GatewayRuntime) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(GatewayCollector(runtime))
        self.timer = RequestTimer(self.registry)
        passes = Histogram("trainyard_scheduling_pass_seconds", "Scheduling passes of this gateway (while it leads)",
                           registry=self.registry, buckets=PASS_BUCKETS)
        runtime.on_scheduling_pass.append(passes.observe)

    def route(self, guards: list[Guard]) -> HTTPRouteHandler:
        registry = self.registry

        @get("/metrics", guards=guards, media_type=CONTENT_TYPE, include_in_schema=True,
             summary="The gateway's metrics, in Prometheus's text format")
        async def prometheus_metrics() -> Response[bytes]:
            return Response(generate_latest(registry), media_type=CONTENT_TYPE)

        return prometheus_metrics
