"""The agent process: connect, provision, then run the command loop and the heartbeat."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path

import msgspec
import psutil
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from agent.gpus import GpuInventory
from agent.supervisor import Supervisor
from shared import events as ev
from shared import provision, subjects
from shared.clock import now_s
from shared.commands import decode_command
from shared.config import AgentSettings
from shared.ids import check_token
from shared.natsconn import connect
from shared.pullfeed import PullFeed

log = logging.getLogger("trainyard.agent")


async def ensure_command_consumer(js: JetStreamContext, host: str) -> None:
    name = subjects.agent_consumer(host)
    config = ConsumerConfig(
        durable_name=name,
        filter_subject=subjects.cmd_filter(host),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=30.0,
        max_ack_pending=256,
    )
    try:
        await js.consumer_info(subjects.CMD_STREAM, name)
    except NotFoundError:
        await js.add_consumer(subjects.CMD_STREAM, config)


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.host = check_token(settings.host, "host")
        self.work_dir = Path(settings.work_dir).resolve()
        self.gpus = GpuInventory(self.host, settings.simulate_gpus)
        self.started_s = now_s()
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        nc = await connect(self.settings.nats_url, f"agent-{self.host}")
        js = nc.jetstream()
        await provision.ensure_streams(js)
        await ensure_command_consumer(js, self.host)
        self.supervisor = Supervisor(
            js, self.host, self.work_dir, self.gpus,
            max_line_bytes=self.settings.max_line_bytes,
            batch_max_bytes=self.settings.batch_max_bytes,
            python=self.settings.python,
            trainer_options={"diffusion_pipe_dir": self.settings.diffusion_pipe_dir},
            log_cap_bytes=self.settings.max_log_bytes_per_attempt,
        )
        await self.supervisor.readopt()
        feed = PullFeed(nc, subjects.CMD_STREAM, subjects.agent_consumer(self.host), batch=64)
        await feed.start()
        tasks = [
            asyncio.create_task(self._command_loop(feed), name="agent-commands"),
            asyncio.create_task(self._heartbeat_loop(js), name="agent-heartbeat"),
        ]
        log.info("agent %s up; work dir %s; %s", self.host, self.work_dir, self.gpus.note or "")
        stop_wait = asyncio.create_task(self._stopping.wait(), name="agent-stop-wait")
        done, _ = await asyncio.wait([*tasks, stop_wait], return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stop_wait.cancel()
        await self.supervisor.shutdown(self.settings.stop_trainers_on_exit)
        await self._publish_heartbeat(js, leaving=True)
        await feed.stop()
        await nc.drain()
        for task in done:
            if task is not stop_wait and not task.cancelled() and task.exception():
                raise task.exception()  # type: ignore[misc]

    def request_stop(self) -> None:
        self._stopping.set()

    async def _command_loop(self, feed: PullFeed) -> None:
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
        for run in self.supervisor.active_runs():
            if run.root is not None:
                for gpu in run.command.gpu_ids:
                    busy.setdefault(gpu, []).append(run.root.pid)
        return ev.HostHeartbeat(
            host=self.host,
            ts_s=now_s(),
            agent_started_s=self.started_s,
            interval_s=self.settings.heartbeat_interval_s,
            cpu_percent=psutil.cpu_percent(interval=None),
            memory_total_mb=vm.total // 2**20,
            memory_used_mb=(vm.total - vm.available) // 2**20,
            disk_free_mb=disk_free_mb,
            gpus=self.gpus.snapshot(busy),
            running_jobs=self.supervisor.running_jobs(),
            gpu_note=self.gpus.note,
            jobs=self.supervisor.host_jobs(),
            leaving=leaving,
        )

    async def _publish_heartbeat(self, js: JetStreamContext, leaving: bool = False) -> None:
        beat = self.heartbeat(leaving)
        try:
            await js.publish(
                subjects.host_event(self.host, "heartbeat"), ev.encode(beat),
                headers={"Nats-Msg-Id": f"{self.host}:hb:{time.time_ns()}"}, timeout=5.0,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a missed beat is fine; the next one comes soon
            log.warning("heartbeat not published: %s", exc)

    async def _heartbeat_loop(self, js: JetStreamContext) -> None:
        while True:
            await self._publish_heartbeat(js)
            await asyncio.sleep(self.settings.heartbeat_interval_s)


def run_agent(settings: AgentSettings) -> None:
    async def main() -> None:
        agent = Agent(settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.request_stop)
        await agent.run()

    asyncio.run(main())
