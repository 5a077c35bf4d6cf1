"""The gateway's moving parts, started and stopped in order: NATS, DuckDB, projector, scheduler."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from nats.aio.client import Client

from gateway import schemas as views
from gateway.projection.projector import Projector
from gateway.projection.schema import open_db, query_threads
from gateway.read.queries import Reader
from gateway.read.sql import SqlRunner
from gateway.scheduling.scheduler import Scheduler
from gateway.services.cluster import ClusterService
from gateway.services.host_files import HostFiles
from gateway.services.jobs import JobService
from gateway.services.quotas import QuotaService
from gateway.services.workdirs import Workdirs
from gateway.webhook_policy import WebhookPolicy
from gateway.webhooks import WebhookNotifier, load_secret
from gateway.writer import EventWriter, JetStreamWrites
from shared import subjects
from shared.config import GatewaySettings
from shared.nats import provision
from shared.nats.connect import close_quietly, connect
from shared.paths import Forbidden, check_roots, trainyard_own_paths

log = logging.getLogger("trainyard.gateway")

DB_FILE = "trainyard.duckdb"


WORKSPACE_DIR = "workspace"


def allowed_roots(settings: GatewaySettings) -> list[str]:
    """Where paths in requests may point: the configured roots, or DATA/workspace. No root may
    expose the data dir (API tokens, NATS credentials, the projection), trainyard's Python
    environment or its code: RootNotAllowed (the gateway refuses to start)."""
    data_dir = Path(settings.data_dir).resolve()
    workspace = data_dir / WORKSPACE_DIR
    if not settings.allowed_roots:
        workspace.mkdir(parents=True, exist_ok=True)
    forbidden = [Forbidden(str(data_dir), "the gateway's data dir: API tokens, NATS credentials, the projection"),
                 *trainyard_own_paths()]
    return check_roots(settings.allowed_roots or [str(workspace)], forbidden, inside_ok=[str(workspace)])


class GatewayRuntime:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.allowed_roots = allowed_roots(settings)  # checked before anything starts
        self.nc: Client | None = None
        self.writes = JetStreamWrites()  # whether the gateway's writes go through, for /health
        self.on_scheduling_pass: list[Callable[[float], None]] = []  # /metrics observes each pass
        self._monitor: httpx.AsyncClient | None = None  # to nats-server's /healthz (nats_monitor_url)

    async def start(self) -> None:
        s = self.settings
        data_dir = Path(s.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        if s.nats_monitor_url:
            self._monitor = httpx.AsyncClient(base_url=s.nats_monitor_url.rstrip("/"), timeout=1.0)
        self.nc = await connect(s.nats_url, f"gateway-{s.replica}", credentials=s.nats_credentials, ca_file=s.nats_ca)
        self.js = self.nc.jetstream()
        await provision.when_jetstream_ready(lambda: provision.ensure_all(
            self.js, log_max_age_s=s.log_max_age_s, log_max_bytes=s.log_max_bytes, replicas=s.stream_replicas,
            workdir_keep_s=s.workdir_keep_s))
        self.con = open_db(str(data_dir / DB_FILE), threads=query_threads(s.duckdb_threads))
        self.projector = Projector(self.con, s.replica, batch=s.projector_batch,
                                   gpu_samples_keep_s=s.gpu_samples_keep_s)
        await self.projector.start(self.nc, self.js)
        writer = EventWriter(self.js, self.projector, s.read_your_writes_timeout_s, self.writes)
        self.scheduler = Scheduler(
            self.nc, self.js, self.projector, writer, replica=s.replica, host_timeout_s=s.host_timeout_s,
            host_lost_grace_s=s.host_lost_grace_s, interval_s=s.scheduler_interval_s,
            lease_ttl_s=s.scheduler_lease_ttl_s, fair_share_half_life_s=s.fair_share_half_life_s,
        )
        self.scheduler.on_pass = self.on_scheduling_pass
        await self.scheduler.start()
        self._consumers = asyncio.create_task(self._provide_command_consumers(), name="command-consumers")
        webhook_policy = WebhookPolicy(s.webhook_allow)
        self.webhooks = WebhookNotifier(writer, self.projector, load_secret(s.webhook_secret, data_dir),
                                        lambda: self.scheduler.is_leader, webhook_policy)
        self.reader = Reader(self.con)
        self.sql = SqlRunner(self.con)
        self.quotas = QuotaService(writer, self.projector)
        self.workdirs = Workdirs(self.js, data_dir / "uploads", s.workdir_max_bytes)
        self.host_files = HostFiles(self.nc)
        self.cluster = ClusterService(writer, self.projector, self.scheduler, self.reader, replica=s.replica)
        self.service = JobService(writer, self.projector, self.scheduler, self.cluster, self.reader,
                                  allowed_roots=self.allowed_roots, webhook_policy=webhook_policy,
                                  ryw_timeout_s=s.read_your_writes_timeout_s, watch=s.watch,
                                  workdirs=self.workdirs)
        # What start built (the recovered projection, the app) lives as long as the process:
        # keep it out of the collector's full passes, whose pauses were the API's p99.
        gc.collect()
        gc.freeze()

    async def stop(self) -> None:
        """Undo whatever `start` got through, in reverse (a failed start calls this too). The
        scheduler goes first so that its lease is released while the rest winds down."""
        steps: list[tuple[str, Callable[[], Awaitable[None] | None]]] = []
        if (consumers := getattr(self, "_consumers", None)) is not None:
            consumers.cancel()
        for name in ("scheduler", "webhooks", "projector"):
            if (part := getattr(self, name, None)) is not None:
                steps.append((name, part.stop))
        for name in ("reader", "sql"):
            if (part := getattr(self, name, None)) is not None:
                steps.append((name, part.close))
        if (nc := self.nc) is not None:
            steps.append(("nats close", lambda: close_quietly(nc)))
        if (monitor := self._monitor) is not None:
            steps.append(("nats monitor client", monitor.aclose))
        if (con := getattr(self, "con", None)) is not None:
            steps.append(("duckdb", con.close))
        for name, step in steps:
            started = time.monotonic()
            result = step()
            if result is not None:
                await result
            if (took := time.monotonic() - started) > 1.0:
                log.warning("shutdown: %s took %.1fs", name, took)

    async def _provide_command_consumers(self) -> None:
        """Each host that heartbeats gets its durable command consumer (agents may not create
        consumers; natsauth). Checked every 0.1 s against the projected heartbeats."""
        provided: set[str] = set()
        while True:
            for host in self.projector.heartbeats.keys() - provided:
                try:
                    await provision.ensure_command_consumer(self.js, host)
                    provided.add(host)
                except Exception as exc:  # NATS away: the next round tries again
                    log.warning("command consumer for host %s not created yet: %s", host, exc)
            await asyncio.sleep(0.1)

    async def projector_lag(self) -> dict[str, int]:
        """Per event stream: how many events the projection is behind (-1: NATS unreachable)."""
        lag = {}
        for stream in subjects.EVENT_STREAMS:
            try:
                info = await self.js.stream_info(stream)
                lag[stream] = max(0, info.state.last_seq - self.projector.applied[stream])
            except Exception:
                lag[stream] = -1
        return lag

    async def health(self) -> views.Health:
        """What /health says: NATS connected, JetStream taking writes, the projection keeping up."""
        nats = self.nats_state()
        problems = [text for text in (self.writes.health(), await self._nats_server_health()) if text != "ok"]
        jetstream = "; ".join(problems) or "ok"
        ok = nats == "connected" and jetstream == "ok" and self.projector.ok
        return views.Health(status="ok" if ok else "degraded", nats=nats, jetstream=jetstream,
                            projector=self.projector.health(), projector_lag=await self.projector_lag())

    async def _nats_server_health(self) -> str:
        """"ok", or what nats-server's /healthz says is wrong (with `nats_monitor_url` set)."""
        if self._monitor is None:
            return "ok"
        try:
            body = (await self._monitor.get("/healthz")).json()
        except (httpx.HTTPError, ValueError) as exc:
            return f"nats-server's monitoring at {self._monitor.base_url} did not answer ({exc or type(exc).__name__})"
        if isinstance(body, dict) and body.get("status") == "ok":
            return "ok"
        return f"nats-server: {body.get('error') if isinstance(body, dict) else body}"

    def nats_state(self) -> str:
        if self.nc is None:
            return "not connected"
        if self.nc.is_connected:
            return "connected"
        return "reconnecting" if self.nc.is_reconnecting else "disconnected"
