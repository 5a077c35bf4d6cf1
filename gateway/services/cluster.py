"""The cluster side of the service layer: GPUs, hosts, the queue and its processor.

Answers come from the projector's memory (latest heartbeats, live job states) and the pure
planner, so any gateway replica answers them, leader or not. Writes (pausing the processor,
removing a queued job) are events, like everything else.
"""

from __future__ import annotations

import statistics

from gateway import schemas as views
from gateway.errors import Unavailable, refuse_unless_allowed
from gateway.projection.projector import Projector
from gateway.read.queries import Reader
from gateway.scheduling.estimates import estimate_starts
from gateway.scheduling.scheduler import LeaderUnavailable, Scheduler
from gateway.services.lookup import shown_state
from gateway.writer import EventWriter
from shared import events as ev
from shared.clock import now_s
from shared.jobstate import ON_HOST, JobState


class ClusterService:
    def __init__(self, writer: EventWriter, projector: Projector, scheduler: Scheduler,
                 reader: Reader, *, replica: str) -> None:
        self.writer = writer
        self.projector = projector
        self.scheduler = scheduler
        self.reader = reader
        self.replica = replica

    # ---- GPUs and hosts -------------------------------------------------------------------------
    def _gpu_users(self) -> dict[tuple[str, int], str]:
        users: dict[tuple[str, int], str] = {}
        for job_id, state in self.projector.live_states.items():
            if state.status in ON_HOST and state.host:
                for g in state.gpu_ids:
                    users[(state.host, g)] = job_id
        for a in self.scheduler.placements():
            for g in a.gpu_ids:
                users[(a.host, g)] = a.job_id
        return users

    def gpus(self) -> views.GpuList:
        now = now_s()
        users = self._gpu_users()
        out: list[views.GpuView] = []
        for host in sorted(self.projector.heartbeats):
            beat = self.projector.heartbeats[host]
            online = self.scheduler.host_online(beat, now)
            # What the agent reports busy beyond the projection: an ended attempt whose
            # processes survive (its GPUs stay held), processes trainyard did not start.
            reported = self.scheduler.busy_by_report(beat, self.projector.live_states)
            holders = {g: hj.job_id for hj in beat.jobs for g in hj.gpu_ids}
            for g in beat.gpus:
                job = users.get((host, g.index)) or (holders.get(g.index) if g.index in reported else None)
                state = "offline" if not online else "busy" if job or g.index in reported else "free"
                out.append(views.GpuView(
                    host=host, index=g.index, uuid=g.uuid, name=g.name, state=state, job_id=job,
                    memory_total_mb=g.memory_total_mb, memory_used_mb=g.memory_used_mb,
                    memory_free_mb=max(0, g.memory_total_mb - g.memory_used_mb),
                    utilization_pct=g.utilization_pct, temperature_c=g.temperature_c,
                    power_w=g.power_w, pids=g.pids, simulated=g.simulated, host_online=online,
                ))
        count = {s: sum(1 for g in out if g.state == s) for s in ("free", "busy", "offline")}
        return views.GpuList(gpus=out, total=len(out), free=count["free"], busy=count["busy"],
                             offline=count["offline"], simulated=any(g.simulated for g in out))

    def hosts(self) -> list[views.HostStatus]:
        now = now_s()
        free_by_host: dict[str, int] = {}
        for g in self.gpus().gpus:
            free_by_host[g.host] = free_by_host.get(g.host, 0) + (g.state == "free")
        out = []
        for host in sorted(self.projector.heartbeats):
            b = self.projector.heartbeats[host]
            online = self.scheduler.host_online(b, now)
            out.append(views.HostStatus(
                host=host, status="online" if online else "offline", last_seen_s=b.ts_s,
                seconds_since_heartbeat=round(max(0.0, now - b.ts_s), 3),
                agent_started_s=b.agent_started_s, heartbeat_interval_s=b.interval_s,
                cpu_percent=b.cpu_percent, memory_total_mb=b.memory_total_mb,
                memory_used_mb=b.memory_used_mb, disk_free_mb=b.disk_free_mb, gpus=len(b.gpus),
                gpus_free=free_by_host.get(host, 0), simulated=any(g.simulated for g in b.gpus),
                running_jobs=b.running_jobs, note=b.gpu_note,
            ))
        return out

    # ---- the queue --------------------------------------------------------------------------------
    async def estimated_waits(self) -> dict[str, float]:
        """Seconds until each queued job is expected to start, where the running jobs' ETAs and
        the past runs of the queued jobs' trainers allow an estimate."""
        queue, hosts = self.scheduler.snapshot()
        if not queue or self.scheduler.paused:
            return {}  # nothing starts while the processor is stopped: no "about 0 s"
        states, needs = self.projector.live_states, self.projector.needs
        running = {j: s for j, s in states.items() if s.status in ON_HOST and s.host in hosts}
        etas = await self.reader.progress_etas(list(running))
        now = now_s()
        busy_until: dict[tuple[str, int], float | None] = {}
        for job_id, state in running.items():
            eta = etas.get(job_id)
            for g in state.gpu_ids:
                busy_until[(state.host, g)] = now + eta if eta is not None else None  # type: ignore[index]
        durations = await self.reader.run_durations_by_trainer()
        expected = {q.job_id: statistics.median(durations[t]) for q in queue
                    if (t := needs[q.job_id].spec.trainer) in durations}
        # A job waiting for other jobs gets no estimate: when they end is not known here.
        ready, _, _ = self.scheduler.gates.verdicts(queue)
        starts = estimate_starts(ready, hosts, busy_until, expected, now)
        return {job_id: round(max(0.0, t - now), 1) for job_id, t in starts.items()}

    async def queue(self) -> views.QueueView:
        queue, waiting, _ = self.scheduler.preview()
        waits = await self.estimated_waits()
        states = self.projector.live_states
        entries = []
        for position, q in enumerate(queue, start=1):
            n, spec = q.needs, q.needs.spec
            entries.append(views.QueueEntry(
                job_id=q.job_id, name=spec.name, position=position, priority=n.priority, gpus=n.gpus,
                gpu_ids=list(n.gpu_ids) or None, host=n.host, min_gpu_memory_gb=n.min_gpu_memory_gb,
                attempt=q.attempt, submitted_s=states[q.job_id].submitted_s,
                waiting_reason=waiting.get(q.job_id, "being placed now"),
                estimated_wait_s=waits.get(q.job_id),
                anomaly_kinds=sorted({a.kind for a in self.projector.anomalies.get(q.job_id, ())}),
            ))
        return views.QueueView(length=len(entries), processor_running=not self.scheduler.paused, jobs=entries)

    async def queue_job(self, job_id: str) -> views.QueueJobStatus:
        state = self._state(job_id)
        queue, waiting, _ = self.scheduler.preview()
        position = next((i for i, q in enumerate(queue, start=1) if q.job_id == job_id), None)
        waits = await self.estimated_waits() if position else {}
        return views.QueueJobStatus(
            job_id=job_id, status=state.status.value, in_queue=position is not None,
            position=position, queue_length=len(queue),
            priority=self.projector.needs[job_id].priority,
            waiting_reason=waiting.get(job_id, "being placed now") if position else None,
            estimated_wait_s=waits.get(job_id),
        )

    async def remove_from_queue(self, job_id: str, user: str = "") -> views.StopResponse:
        state = self._state(job_id)
        event = ev.JobCancelled(job_id=job_id, attempt=state.attempt, ts_s=now_s(),
                                reason=f"removed from the queue by {user or 'request'}")
        refuse_unless_allowed(self.scheduler.as_placed(state), event)
        await self.writer.publish_and_wait(event)
        return views.StopResponse(job_id=job_id, status=self._state(job_id).status.value,
                                  message="removed from the queue")

    # ---- the processor ------------------------------------------------------------------------------
    def processor_status(self) -> views.ProcessorStatus:
        lease = self.scheduler.lease
        running = not self.scheduler.paused
        return views.ProcessorStatus(
            running=running, status="running" if running else "stopped", leader=lease.holder,
            this_replica=self.replica, this_replica_leads=lease.is_leader,
            leader_since_s=lease.since_s, queue_length=len(self.scheduler.queued()),
        )

    async def set_processor(self, running: bool, user: str = "") -> views.ProcessorStatus:
        control: ev.SchedulerControl = (ev.SchedulerResumed if running else ev.SchedulerPaused)(
            ts_s=now_s(), by=user)
        await self.writer.publish_and_wait(control)
        return self.processor_status()

    async def process_now(self) -> views.ProcessResult:
        try:
            result = await self.scheduler.process_now()
        except LeaderUnavailable as exc:
            raise Unavailable(str(exc)) from None
        message = ("the queue processor is stopped: nothing was placed (POST /queue/processor/start resumes it)"
                   if result.paused else f"placed {len(result.placed)}; {result.waiting} still waiting")
        return views.ProcessResult(leader=result.leader, processor_running=not result.paused,
                                   placed=result.placed, still_waiting=result.waiting, message=message)

    def system_status(self, health: views.Health) -> views.SystemStatus:
        now = now_s()
        beats = list(self.projector.heartbeats.values())
        online = sum(1 for b in beats if self.scheduler.host_online(b, now))
        gpus = self.gpus()
        states = self.projector.live_states.values()
        return views.SystemStatus(
            status=health.status, hosts_online=online,
            hosts_offline=len(beats) - online, gpus_total=gpus.total, gpus_free=gpus.free,
            gpus_busy=gpus.busy, gpus_simulated=gpus.simulated,
            jobs_running=sum(1 for s in states if s.status in ON_HOST),
            queue_length=len(self.scheduler.queued()), processor_running=not self.scheduler.paused,
            scheduler_leader=self.scheduler.lease.holder, nats=health.nats, jetstream=health.jetstream,
            projector=health.projector, projector_lag=health.projector_lag,
        )

    # ---- helpers --------------------------------------------------------------------------------------
    def _state(self, job_id: str) -> JobState:
        """The job as the scheduler sees it now; 404 for a job the API has not shown yet."""
        return self.projector.live_states.get(job_id, shown_state(self.projector, job_id))
