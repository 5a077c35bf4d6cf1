"""The agent process: connect, provision, then run the command loop and the heartbeat."""

from __future__ import annotations

import asyncio
import dataclasses
import faulthandler
import logging
import signal
import sys
import time
from pathlib import Path

import msgspec
import psutil
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from agent.files import FileServer
from agent.gpus import GpuInventory
from agent.join import JoinFailed, nats_identity
from agent.metrics import serve_metrics
from agent.options import RunOptions
from agent.publisher import publish_once
from agent.supervisor import Supervisor
from shared import events as ev
from shared import subjects
from shared.aio import cancel_and_wait, wait_set
from shared.clock import now_s
from shared.commands import decode_command
from shared.config import AgentSettings
from shared.ids import check_token
from shared.nats.connect import close_quietly, connect, is_refusal
from shared.nats.pullfeed import PullFeed
from shared.paths import RootNotAllowed, hold_lock, private_dir

log = logging.getLogger("trainyard.agent")


async def wait_for_command_consumer(js: JetStreamContext, host: str, stopping: asyncio.Event) -> bool:
    """The agent reads its commands from a durable consumer the gateway creates when it sees
    the host's first heartbeat (an agent may not create consumers: natsauth). False if asked
    to stop meanwhile."""
    name = subjects.agent_consumer(host)
    delay_s, said = 0.05, False
    while not stopping.is_set():
        try:
            await js.consumer_info(subjects.CMD_STREAM, name, timeout=2.0)
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # not there yet, streams not provisioned, NATS away
            if not said:
                log.info("waiting for the gateway to create command consumer %s (%s)", name, exc or type(exc).__name__)
                said = True
        await wait_set(stopping, delay_s)
        delay_s = min(delay_s * 2, 0.25)
    return False


class HostInUse(Exception):
    """Another agent runs with this host name (or on this work dir)."""


class IdentityRefused(Exception):
    """nats-server refuses this host's identity: it was removed, or never joined."""

    def __init__(self, host: str) -> None:
        super().__init__(f"nats-server refuses the identity of host {host} (Authorization Violation): it was "
                         "removed (trainyard host remove) or never joined; ask an admin for a new join command "
                         "(trainyard host add)")


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.host = check_token(settings.host, "host")
        self.work_dir = private_dir(Path(settings.work_dir).resolve())
        self._work_dir_lock = hold_lock(self.work_dir / "agent.lock")  # held as long as this process lives
        if isinstance(self._work_dir_lock, str):
            raise HostInUse(f"work dir {self.work_dir} is in use by another agent (pid {self._work_dir_lock})")
        # A join (`--join TOKEN`) happens here, before anything starts: a refusal ends the agent.
        self.nkey, self.nats_ca = nats_identity(settings, self.work_dir, self.host)
        self.gpus = GpuInventory(self.host, settings.simulate_gpus)
        self.options = dataclasses.replace(  # RootNotAllowed before anything starts
            RunOptions.from_settings(settings),
            simulate_gpu_util=self.gpus.simulate_utilisation if self.gpus.simulated else None)
        self.started_s = now_s()
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        refused = asyncio.Event()
        try:
            nc = await connect(self.settings.nats_url, f"agent-{self.host}", credentials=self.settings.nats_credentials,
                               nkey=self.nkey, ca_file=self.nats_ca, refused=refused)
        except Exception as exc:
            if is_refusal(exc):
                raise IdentityRefused(self.host) from None
            raise
        js = nc.jetstream()
        await self._refuse_if_host_alive(js)
        self.supervisor = Supervisor(js, self.host, self.work_dir, self.gpus, self.options)
        feed = PullFeed(nc, subjects.CMD_STREAM, subjects.agent_consumer(self.host), batch=64)
        files = FileServer(nc, self.host, self.supervisor.runs_dir)
        await files.start()
        # Heartbeats first: the gateway creates this host's command consumer when it sees one.
        # Everything else may wait on NATS, so it runs as a task that a stop cancels.
        tasks = [asyncio.create_task(self._heartbeat_loop(js), name="agent-heartbeat"),
                 asyncio.create_task(self._serve(js, feed), name="agent-commands")]
        metrics = (await serve_metrics(self.settings.metrics_bind, self.settings.metrics_port, self._backlog)
                   if self.settings.metrics_port else None)
        stop_wait = asyncio.create_task(self._stopping.wait(), name="agent-stop-wait")
        refused_wait = asyncio.create_task(refused.wait(), name="agent-refused-wait")
        done, _ = await asyncio.wait([*tasks, stop_wait, refused_wait], return_when=asyncio.FIRST_COMPLETED)
        refused_wait.cancel()
        await cancel_and_wait(tasks)
        stop_wait.cancel()
        started = time.monotonic()
        await self.supervisor.shutdown(self.settings.stop_trainers_on_exit)
        if nc.is_connected:  # a last beat says "leaving" (the host goes offline at once)
            await self._publish_heartbeat(js, leaving=True)
        await feed.stop()
        await files.stop()
        if metrics is not None:
            metrics.close()
        await close_quietly(nc)
        if (took := time.monotonic() - started) > 2.0:
            log.warning("stopping took %.1fs", took)
        if refused.is_set():
            raise IdentityRefused(self.host)
        for task in done:
            if task is not stop_wait and not task.cancelled() and task.exception():
                raise task.exception()  # type: ignore[misc]

    def _backlog(self) -> tuple[int, int]:
        """(log and metric bytes not yet acknowledged, attempts watched): for /metrics."""
        runs = self.supervisor.active_runs()
        unacked = sum(r.reporter.log_batcher.pending_bytes + r.reporter.metric_batcher.pending_bytes for r in runs)
        return unacked, len(runs)

    async def _refuse_if_host_alive(self, js: JetStreamContext) -> None:
        """One host name, one agent: HostInUse when another agent of this host name is alive
        elsewhere (its heartbeats go on). An agent that died just now (a restart) is told apart
        by waiting for the beat it would send next."""
        last = await self._last_beat(js)
        if last is None or last.leaving or now_s() - last.ts_s > 2 * last.interval_s:
            return
        await asyncio.sleep(min(1.5 * last.interval_s, 10.0))
        again = await self._last_beat(js)
        if again is not None and not again.leaving and again.ts_s > last.ts_s:
            raise HostInUse(f"host name {self.host} is in use by another agent (started "
                            f"{time.strftime('%H:%M:%S', time.localtime(again.agent_started_s))}, "
                            f"beating every {again.interval_s:g}s); give this one another --host")

    async def _last_beat(self, js: JetStreamContext) -> ev.HostHeartbeat | None:
        try:
            msg = await js.get_last_msg(subjects.HOST_STREAM, subjects.host_event(self.host, "heartbeat"),
                                        direct=True)
            return ev.decode_heartbeat(msg.data or b"")
        except NotFoundError:
            return None
        except Exception as exc:  # cannot tell: start (the scheduler fences a duplicate's jobs)
            log.warning("could not read this host's last heartbeat (%s); starting anyway", exc)
            return None

    def request_stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def _serve(self, js: JetStreamContext, feed: PullFeed) -> None:
        """Re-adopt what a previous agent left running, then read commands."""
        await self.supervisor.readopt()
        if not await wait_for_command_consumer(js, self.host, self._stopping):
            return
        await feed.start()
        log.info("agent %s up; work dir %s; %s", self.host, self.work_dir, self.gpus.note or "")
        while True:
            for msg in await feed.next_batch():
                try:
                    command = decode_command(msg.data)
                except msgspec.DecodeError as exc:
                    log.error("undecodable command on %s dropped: %s", msg.subject, exc)
                    await msg.term()
                    continue
                await self.supervisor.handle(command)
                await msg.ack()

    def heartbeat(self, leaving: bool = False) -> ev.HostHeartbeat:
        vm = psutil.virtual_memory()
        try:
            disk_free_mb = psutil.disk_usage(str(self.work_dir)).free // 2**20
        except OSError:
            disk_free_mb = 0
        busy: dict[int, list[int]] = {}
        runs = self.supervisor.active_runs()
        for run in runs:
            if run.root is not None:
                for gpu in run.command.gpu_ids:
                    busy.setdefault(gpu, []).append(run.root.pid)
        gpus = self.gpus.snapshot(busy)
        utilisation = {g.index: g.utilization_pct for g in gpus}
        for run in runs:  # the idle-GPU watch takes the same samples as the heartbeat shows
            run.watchdog.gpu_utilisation(utilisation)
        return ev.HostHeartbeat(
            host=self.host,
            ts_s=now_s(),
            agent_started_s=self.started_s,
            interval_s=self.settings.heartbeat_interval_s,
            cpu_percent=psutil.cpu_percent(interval=None),
            memory_total_mb=vm.total // 2**20,
            memory_used_mb=(vm.total - vm.available) // 2**20,
            disk_free_mb=disk_free_mb,
            gpus=gpus,
            running_jobs=self.supervisor.running_jobs(),
            gpu_note=self.gpus.note,
            jobs=self.supervisor.host_jobs(),
            leaving=leaving,
        )

    async def _publish_heartbeat(self, js: JetStreamContext, leaving: bool = False) -> None:
        beat = self.heartbeat(leaving)
        try:
            await publish_once(js, beat, host=self.host)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a missed beat is fine; the next one comes soon
            log.warning("heartbeat not published: %s", exc)

    async def _heartbeat_loop(self, js: JetStreamContext) -> None:
        while True:
            await self._publish_heartbeat(js)
            await asyncio.sleep(self.settings.heartbeat_interval_s)


# How long a stop may take before the agent writes every thread's stack to its log and exits
# anyway (trainers are unaffected: they run in their own sessions under their keepers).
SHUTDOWN_LIMIT_S = 20.0


def run_agent(settings: AgentSettings) -> None:
    try:
        agent = Agent(settings)
    except (RootNotAllowed, HostInUse, JoinFailed) as exc:
        sys.exit(f"trainyard agent: {exc}")

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def stop() -> None:
            if not agent.stopping:
                faulthandler.dump_traceback_later(SHUTDOWN_LIMIT_S, exit=True)
            agent.request_stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        await agent.run()

    try:
        asyncio.run(main())
    except (HostInUse, IdentityRefused) as exc:
        sys.exit(f"trainyard agent: {exc}")
