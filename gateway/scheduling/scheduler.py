"""The scheduler: places queued jobs on hosts' GPUs and watches the hosts (DESIGN §4, §5).

Only the replica holding the lease (`lease.py`) acts. On every change of the projection (and on
a one-second timer) the leader:

1. declares the jobs of hosts that stopped heartbeating `lost` (or sends them back to the queue
   while retries remain: the state machine decides), once the host has been offline longer than
   `host_timeout_s + host_lost_grace_s`;
2. fences a returning host: an attempt it still runs that the job has moved past (re-placed,
   lost, finished) gets a force stop, so no job runs twice;
3. unless the queue processor is paused, runs `placement.plan_pass` and publishes `JobScheduled`
   and the host's `start` command for each assignment, remembering it until the projection shows
   it, and carries out the pass's preemptions (preempter.py).

On becoming leader it re-sends the start command of every job still `scheduled`: a leader that
died between the two publishes leaves no job stranded (the agent's dedupe makes a repeat harmless).
Any replica can answer "where would this job go / why does it wait" by running the pure planner.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from gateway.projection.projector import Projector
from gateway.scheduling.gates import QueueGates
from gateway.scheduling.lease import SchedulerLease
from gateway.scheduling.placement import Assignment, HostView, QueuedJob, plan_pass
from gateway.scheduling.preempter import Preempter
from gateway.writer import EventWriter
from shared import events as ev
from shared import subjects
from shared.aio import cancel_and_wait, wait_set
from shared.clock import now_s
from shared.commands import StartJob, StopJob
from shared.jobstate import ON_HOST, JobState, JobStatus

log = logging.getLogger("trainyard.scheduler")

FENCE_REPEAT_S = 5.0
# After an agent refuses a job, it is placed elsewhere, or on that host again only after this
# long (by then a heartbeat shows what made the agent refuse).
REFUSAL_BACKOFF_S = 5.0


class PassResult(msgspec.Struct):
    """What a scheduling pass did; also the reply to a remote "process now"."""

    leader: str
    placed: list[dict[str, object]] = []
    waiting: int = 0
    paused: bool = False


class Scheduler:
    def __init__(self, nc: Client, js: JetStreamContext, projector: Projector, writer: EventWriter, *,
                 replica: str, host_timeout_s: float, host_lost_grace_s: float, interval_s: float,
                 lease_ttl_s: float, fair_share_half_life_s: float = 0.0) -> None:
        self.nc = nc
        self.js = js
        self.projector = projector
        self.writer = writer  # the gateway's one way to publish (and one error policy)
        self.replica = replica
        self.host_timeout_s = host_timeout_s
        self.host_lost_grace_s = host_lost_grace_s
        self.interval_s = interval_s
        self.lease = SchedulerLease(js, replica, lease_ttl_s, writer.writes)
        self.lease.on_change.append(self._leadership_changed)
        self.waiting: dict[str, str] = {}
        self._inflight: dict[str, Assignment] = {}
        self._lost_sent: set[tuple[str, int]] = set()
        self._stops_sent: set[tuple[str, int]] = set()
        self._fenced: dict[tuple[str, str, int], float] = {}
        self.gates = QueueGates(projector, fair_share_half_life_s)
        self.preempter = Preempter(projector, writer)
        self._cancelled: set[tuple[str, int]] = set()  # (job, attempt) ended for unmeetable dependencies
        self._resume_needed = False
        self._leader_since = 0.0
        self._preview: tuple[tuple, tuple[list[QueuedJob], dict[str, str], dict[str, HostView]]] | None = None
        self._kick = asyncio.Event()
        # Told each pass's duration in seconds (the gateway's /metrics histogram).
        self.on_pass: list[Callable[[float], None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._sub: Subscription | None = None
        projector.on_jobs_changed.append(self.kick)

    # ---- state other parts read ----------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        return self.lease.is_leader

    @property
    def paused(self) -> bool:
        return self.projector.scheduler_paused

    def placement(self, job_id: str) -> Assignment | None:
        """An assignment published but not yet visible in the projection."""
        return self._inflight.get(job_id)

    def as_placed(self, state: JobState) -> JobState:
        """The job as it is once an assignment published but not yet projected lands (its
        `scheduled` event is on the way); else as it is."""
        placed = self._inflight.get(state.job_id)
        return state if placed is None else placed.applied_to(state)

    def placements(self) -> list[Assignment]:
        """Every assignment published but not yet visible in the projection."""
        return list(self._inflight.values())

    def queued(self, *, backing_off: bool = False) -> list[QueuedJob]:
        """Queued jobs in the order the scheduler considers them: those it may place now, or
        (`backing_off`) those an automatic retry holds back for a while yet."""
        states, needs = self.projector.live_states, self.projector.needs
        now = now_s()
        jobs = [
            QueuedJob(j, s.attempt, needs[j],
                      s.refused_host if s.refused_s and now - s.refused_s < REFUSAL_BACKOFF_S else None)
            for j, s in states.items()
            if s.status is JobStatus.QUEUED and j not in self._inflight
            and ((s.retry_after_s or 0.0) > now) == backing_off
        ]
        return self.gates.ordered(jobs, now)

    def queue_position(self, job_id: str) -> int | None:
        """1-based place in the order the scheduler will consider queued jobs."""
        queue, _, _ = self.preview()
        for position, q in enumerate(queue, start=1):
            if q.job_id == job_id:
                return position
        return None

    def host_online(self, beat: ev.HostHeartbeat, now: float | None = None) -> bool:
        if beat.leaving:
            return False
        return (now if now is not None else now_s()) - beat.ts_s <= self.host_timeout_s

    def online_hosts(self) -> dict[str, HostView]:
        now = now_s()
        return {
            b.host: HostView(b.host, {g.index: g.memory_total_mb for g in b.gpus})
            for b in self.projector.heartbeats.values()
            if self.host_online(b, now)
        }

    def snapshot(self) -> tuple[list[QueuedJob], dict[str, HostView]]:
        """The queue and the online hosts with what is busy on them (placed, running, or
        assigned but not yet projected)."""
        hosts = self.online_hosts()
        states = self.projector.live_states
        for job_id in list(self._inflight):
            if states[job_id].status is not JobStatus.QUEUED:
                del self._inflight[job_id]  # the projection shows it now
        placed = {a.job_id: a for a in self._inflight.values()}
        for job_id, state in states.items():
            if job_id in placed:
                host, gpus = placed[job_id].host, placed[job_id].gpu_ids
            elif state.status in ON_HOST and state.host is not None:
                host, gpus = state.host, state.gpu_ids
            else:
                continue
            if host in hosts:
                hosts[host].busy |= set(gpus)
                hosts[host].running += 1
        for beat in self.projector.heartbeats.values():
            view = hosts.get(beat.host)
            if view is not None:
                view.busy |= self.busy_by_report(beat, states)
        self.preempter.show_running(hosts)
        return self.queued(), hosts

    @staticmethod
    def busy_by_report(beat: ev.HostHeartbeat, states: dict[str, JobState]) -> set[int]:
        """GPUs the agent reports in use that the projection does not explain: attempts the job
        is no longer on here (a returning host, about to be fenced; a job unknown to trainyard)
        and GPUs with processes trainyard did not start (NVML). A report older than the job's
        last status change is ignored: it predates the exit, and waiting for the next
        heartbeat would idle the GPU for an interval."""
        busy: set[int] = set()
        claimed: set[int] = set()
        for hj in beat.jobs:
            claimed |= set(hj.gpu_ids)
            state = states.get(hj.job_id)
            current = (state is not None and state.status in ON_HOST and state.host == beat.host
                       and state.attempt == hj.attempt)
            if not current and (state is None or beat.ts_s > state.changed_s):
                busy |= set(hj.gpu_ids)
        busy |= {g.index for g in beat.gpus if g.pids and g.index not in claimed}
        return busy

    def preview(self) -> tuple[list[QueuedJob], dict[str, str], dict[str, HostView]]:
        """What a pass would do now, without doing it: the ordered queue, why each job waits
        (jobs that would be placed now are missing from it) and the hosts after it.

        Status and queue requests ask for it on every call; it is computed once per change of
        the projection (and at most once a second, as hosts fall silent without an event)."""
        key = (tuple(self.projector.applied.values()), tuple(sorted(self._inflight)), self.paused, int(now_s()))
        if self._preview is not None and self._preview[0] == key:
            return self._preview[1]
        queue, hosts = self.snapshot()
        now, states = now_s(), self.projector.live_states
        ready, blocked, doomed = self.gates.verdicts(queue)
        waiting = plan_pass(ready, hosts, now=now, claims=self.preempter.live_claims(now)).waiting
        waiting |= blocked | {job: f"{why}: it will not run (ended at the next pass)" for job, why in doomed.items()}
        for q in self.queued(backing_off=True):
            state = states[q.job_id]
            left = (state.retry_after_s or now) - now
            waiting[q.job_id] = (f"retry {state.failures} of {state.max_retries} after a failed attempt: "
                                 f"held back {left:.0f}s more (retry back-off)")
            queue.append(q)
        if self.paused:
            waiting = {q.job_id: "the queue processor is stopped" for q in queue}
        elif (replaying := self.projector.catching_up()) is not None:
            waiting = {q.job_id: f"nothing is placed while the projection is {replaying}" for q in queue}
        self._preview = (key, (queue, waiting, hosts))
        return queue, waiting, hosts

    # ---- running ---------------------------------------------------------------------------------
    def kick(self) -> None:
        self._kick.set()

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(subjects.SCHEDULE_NOW, cb=self._on_process_now)
        await self.lease.first_look()
        self._tasks = [
            asyncio.create_task(self.lease.run(), name="scheduler-lease"),
            asyncio.create_task(self._loop(), name="scheduler"),
        ]

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        if self._sub is not None:
            await self._sub.unsubscribe()
        await self.lease.release()

    def _leadership_changed(self, leader: bool) -> None:
        self._inflight.clear()
        self._lost_sent.clear()
        self._fenced.clear()
        self._cancelled.clear()
        self.preempter.claims.clear()
        self._resume_needed = leader
        if leader:
            self._leader_since = now_s()
            self.kick()

    async def _loop(self) -> None:
        while True:
            await wait_set(self._kick, self.interval_s)
            self._kick.clear()
            if not self.is_leader or self.projector.catching_up() is not None:
                # Nothing is decided from a projection that is still replaying the streams (a
                # restart on a fresh or set-aside file): a job it shows queued may have run and
                # ended long ago; placing it again ran it twice on another host (the soak).
                continue
            try:
                await self.maintain()
                if not self.paused:
                    await self.run_pass()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduling pass failed; the next one retries")

    async def run_pass(self) -> list[Assignment]:
        queue, hosts = self.snapshot()
        if not queue:
            self.waiting = {}
            return []
        started = time.perf_counter()
        now = now_s()
        ready, blocked, doomed = self.gates.verdicts(queue)
        decided = plan_pass(ready, hosts, now=now, claims=self.preempter.live_claims(now))
        assignments, self.waiting = decided.assignments, decided.waiting
        self.waiting |= blocked
        await self._cancel_doomed(doomed)
        await self.preempter.carry_out(decided.preemptions, now)
        elapsed_ms = (time.perf_counter() - started) * 1e3
        for observe in self.on_pass:
            observe(elapsed_ms / 1e3)
        if elapsed_ms > 20:
            log.warning("scheduling pass over %d jobs / %d hosts took %.1f ms", len(queue), len(hosts), elapsed_ms)
        for a in assignments:
            self._inflight[a.job_id] = a
            await self._dispatch(a)
        return assignments

    async def _cancel_doomed(self, doomed: dict[str, str]) -> None:
        """End the queued jobs whose dependencies can no longer be met (once each: until the
        projection shows them stopped, a later pass would see them queued still)."""
        for job_id, why in doomed.items():
            state = self.projector.live_states[job_id]
            if (job_id, state.attempt) in self._cancelled:
                continue
            self._cancelled.add((job_id, state.attempt))
            await self.writer.publish(ev.JobCancelled(job_id=job_id, attempt=state.attempt, ts_s=now_s(),
                                                      reason=f"not run: {why}"))

    def _start_command(self, a: Assignment, ts: float) -> StartJob:
        state = self.projector.live_states.get(a.job_id)
        return StartJob(job_id=a.job_id, attempt=a.attempt, ts_s=ts,
                        spec=self.projector.needs[a.job_id].spec, gpu_ids=list(a.gpu_ids),
                        valid_for_s=self.host_timeout_s + self.host_lost_grace_s,
                        resume_from=state.resume_from if state else None)

    async def _dispatch(self, a: Assignment) -> None:
        ts = now_s()
        scheduled = ev.JobScheduled(job_id=a.job_id, attempt=a.attempt, ts_s=ts, host=a.host,
                                    gpu_ids=list(a.gpu_ids))
        await self.writer.publish(scheduled)
        await self.writer.publish(self._start_command(a, ts), host=a.host)

    # ---- hosts: loss, fencing, stranded starts ------------------------------------------------------
    async def maintain(self) -> None:
        now = now_s()
        states = self.projector.live_states
        beats = self.projector.heartbeats
        if self._resume_needed:
            self._resume_needed = False
            for job_id, state in list(states.items()):
                if state.status is JobStatus.SCHEDULED and state.host is not None:
                    a = Assignment(job_id, state.attempt, state.host, state.gpu_ids)
                    await self.writer.publish(self._start_command(a, now), host=a.host)
        await self._repeat_stops(states, now)
        deadline = self.host_timeout_s + self.host_lost_grace_s
        # A new leader (a restarted gateway, a take-over) first watches the hosts for one
        # timeout (and maintains nothing before its projection has replayed the streams: _loop):
        # before that, a job it has not yet seen started looks "moved past" and would be stopped.
        settled = now - self._leader_since >= self.host_timeout_s
        for job_id, state in list(states.items()) if settled else ():
            if state.status not in ON_HOST or state.host is None:
                continue
            beat = beats.get(state.host)
            silent_s = now - beat.ts_s if beat else now - (state.started_s or state.submitted_s)
            key = (job_id, state.attempt)
            if silent_s > deadline and key not in self._lost_sent:
                self._lost_sent.add(key)
                reason = (f"host {state.host} sent no heartbeat for {silent_s:.0f}s "
                          f"(offline after {self.host_timeout_s:g}s, lost after {deadline:g}s)")
                log.warning("job %s attempt %s lost: %s", job_id, state.attempt, reason)
                await self.writer.publish(ev.JobLost(job_id=job_id, attempt=state.attempt, ts_s=now,
                                                     reason=reason, host=state.host))
        # Fencing waits for the same settling: a new leader's projection of the job stream may
        # still be replaying what the hosts' heartbeats already show running, and a job it has
        # not yet seen started would be stopped as "moved past" (the soak caught one 0.2 s after
        # a take-over).
        for beat in beats.values() if settled else ():
            if not self.host_online(beat, now):
                continue
            for hj in beat.jobs:
                job = states.get(hj.job_id)
                current = (job is not None and job.status in ON_HOST
                           and job.host == beat.host and job.attempt == hj.attempt)
                pending = self._inflight.get(hj.job_id)
                if current or (pending and (pending.host, pending.attempt) == (beat.host, hj.attempt)):
                    continue
                if job is not None and beat.ts_s <= job.changed_s:
                    continue  # the report predates the job's last change: wait for a fresh one
                fence_key = (beat.host, hj.job_id, hj.attempt)
                if now - self._fenced.get(fence_key, 0.0) < FENCE_REPEAT_S:
                    continue
                self._fenced[fence_key] = now
                log.warning("host %s still runs %s attempt %s, which the job has moved past: stopping it",
                            beat.host, hj.job_id, hj.attempt)
                stop = StopJob(job_id=hj.job_id, attempt=hj.attempt, ts_s=now, force=True, grace_s=0.0)
                await self.writer.publish(stop, host=beat.host, unique=f"fence:{int(now)}")

    async def _repeat_stops(self, states: dict[str, JobState], now: float) -> None:
        """Each stopping attempt's host hears the stop once from the leader too: the request
        may have been written while its job was still queued in the writer's view (the stream
        placed it first), so nobody else would tell the host. A repeated stop is a no-op there."""
        stopping = {(j, s.attempt) for j, s in states.items() if s.status is JobStatus.STOPPING}
        self._stops_sent &= stopping  # forget attempts that ended
        for job_id, state in list(states.items()):
            key = (job_id, state.attempt)
            if key not in stopping or state.host is None or key in self._stops_sent:
                continue
            self._stops_sent.add(key)
            stop = StopJob(job_id=job_id, attempt=state.attempt, ts_s=now, force=state.stop_force,
                           grace_s=state.stop_grace_s)
            await self.writer.publish(stop, host=state.host, unique="leader")

    # ---- "process the queue now" from any replica ----------------------------------------------------
    async def process_now(self) -> PassResult:
        """Run a pass now. On a replica that does not lead, ask the leader over NATS."""
        if self.is_leader:
            return await self._local_pass()
        try:
            reply = await self.nc.request(subjects.SCHEDULE_NOW, b"", timeout=3.0)
        except Exception as exc:
            raise LeaderUnavailable(
                f"no gateway holds the scheduler lease right now ({exc.__class__.__name__})"
            ) from None
        return msgspec.json.decode(reply.data, type=PassResult)

    async def _local_pass(self) -> PassResult:
        if self.projector.catching_up() is not None:
            raise LeaderUnavailable(f"the leading gateway's projection is {self.projector.catching_up()}; "
                                    "it places nothing until it has caught up")
        await self.maintain()
        placed = [] if self.paused else await self.run_pass()
        # While paused no pass ran: every queued job is still waiting.
        waiting = len(self.queued()) if self.paused else len(self.waiting)
        return PassResult(
            leader=self.lease.replica, paused=self.paused, waiting=waiting,
            placed=[{"job_id": a.job_id, "attempt": a.attempt, "host": a.host, "gpu_ids": list(a.gpu_ids)}
                    for a in placed],
        )

    async def _on_process_now(self, msg: Msg) -> None:
        if not self.is_leader or not msg.reply:
            return  # only the leader answers
        try:
            result = await self._local_pass()
        except LeaderUnavailable:
            return  # still replaying: the asker hears that no leader answered
        await msg.respond(msgspec.json.encode(result))


class LeaderUnavailable(Exception):
    """No replica answered for the scheduler."""
