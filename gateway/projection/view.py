"""The projection's in-memory view: what the scheduler and the API need without a query.

Each job's state (committed, and live ahead of the commit), its placement needs, each host's
latest heartbeat, the attempts' hosts, and a version that moves whenever the projection does
(`wait_until` waits on it). Loaded from DuckDB at start; kept current by the projector.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable

import duckdb
import msgspec

from gateway.projection.admission import AttemptHosts
from gateway.projection.live_logs import LiveLogs
from gateway.scheduling.placement import JobNeeds
from gateway.scheduling.quotas import Quota
from shared import events as ev
from shared import subjects
from shared.jobspec import JobRequest
from shared.jobstate import AUTO_RETRY_REASON, JobState, JobStatus, retry_wait_s

REFUSALS_KEPT = 10_000


class JobView:
    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self.applied: dict[str, int] = {s: 0 for s in subjects.EVENT_STREAMS}
        # job -> attempt -> the host it was placed on: who may report on it (admission.py).
        self.attempt_hosts: AttemptHosts = {}
        self.scheduler_paused = False  # the queue processor, as the last control event left it
        self.quotas: dict[tuple[str, str], Quota] = {}  # (user|project, name) -> its limits
        # Per job: the job-stream sequence of its last applied event (answers cached by it).
        self.job_versions: dict[str, int] = {}
        # (job, webhook event) delivered or given up on: never sent again, also after a restart.
        self.webhooks_settled: set[tuple[str, str]] = set()
        self.percent: dict[str, float] = {}  # latest, of jobs with progress webhooks
        # Per job, the watchdog's anomalies (the first of each kind per attempt): for listings,
        # details, webhooks and /metrics without a query.
        self.anomalies: dict[str, list[ev.JobAnomaly]] = {}
        # Per job, its latest progress and its latest `loss` point (attempt, value), as written:
        # Prometheus's per-job series (gateway/api/prometheus.py) without a query.
        self.latest_progress: dict[str, ev.JobProgress] = {}
        self.latest_loss: dict[str, tuple[int, float]] = {}
        # Per stream, how many messages the server held beyond the last batch read (its lag).
        self.pending: dict[str, int] = {s: 0 for s in subjects.EVENT_STREAMS}
        # Per job, the sum and count of its GPUs' utilisation samples (the detail's mean).
        self.gpu_use: dict[str, tuple[float, int]] = {}
        self.states: dict[str, JobState] = {}  # as committed to DuckDB: what the API shows
        self.live_states: dict[str, JobState] = {}  # ahead of the commit: what the scheduler uses
        self.needs: dict[str, JobNeeds] = {}
        self.heartbeats: dict[str, ev.HostHeartbeat] = {}
        self.on_jobs_changed: list[Callable[[], None]] = []
        # Job-stream sequence -> why the event there was not applied (the latest REFUSALS_KEPT):
        # a write the state machine refused is a 409, never a 200 (EventWriter.publish_checked).
        self.refusals: OrderedDict[int, str] = OrderedDict()
        # Log lines for followers, ahead of the commit (live_logs.py says why).
        self.live_logs = LiveLogs()  # loaded from DuckDB in _load
        # Counts the moves of the projection: a batch committed, a log batch decoded.
        self.version = 0
        # Set (and replaced) whenever the projection moves. Not an asyncio.Condition: a waiter
        # holds a Condition's lock around its wait, and a waiter torn down mid-wait (an SSE
        # client that disconnects closes its generator there) could leave the lock held for
        # good, and with it every later commit.
        self._changed = asyncio.Event()
        self._load()

    # ---- loading from DuckDB at start -------------------------------------------------------
    def _load(self) -> None:
        for stream in subjects.EVENT_STREAMS:
            self.con.execute(
                "INSERT INTO projector_offsets SELECT ?, 0 "
                "WHERE NOT EXISTS (SELECT 1 FROM projector_offsets WHERE stream = ?)",
                [stream, stream],
            )
        for stream, seq in self.con.execute("SELECT stream, last_seq FROM projector_offsets").fetchall():
            self.applied[stream] = int(seq)
        rows = self.con.execute(
            """SELECT job_id, status, attempt, host, gpu_ids, submitted_s, started_s, finished_s,
                      exit_code, signal, reason, stop_requested, pid, run_dir, stdout_path,
                      stderr_path, last_lines, priority, submit_seq, gpus, requested_gpu_ids,
                      requested_host, min_gpu_memory_gb, spec, max_retries, failures, updated_s,
                      submitted_by, resume_from, preempted_by, preemptions
               FROM jobs"""
        ).fetchall()
        decode_spec = msgspec.json.Decoder(JobRequest).decode
        for r in rows:
            self.states[r[0]] = JobState(
                job_id=r[0], status=JobStatus(r[1]), attempt=r[2], host=r[3],
                gpu_ids=tuple(r[4] or ()), submitted_s=r[5], started_s=r[6], finished_s=r[7],
                exit_code=r[8], signal=r[9], reason=r[10] or "", stop_requested=bool(r[11]),
                pid=r[12], run_dir=r[13], stdout_path=r[14], stderr_path=r[15],
                last_lines=tuple(r[16] or ()), max_retries=r[24], failures=r[25] or 0,
                changed_s=r[26] or 0.0, resume_from=r[28], preempted_by=r[29], preemptions=r[30] or 0,
            )
            self.needs[r[0]] = JobNeeds(
                priority=r[17], submit_seq=r[18], gpus=r[19], gpu_ids=tuple(r[20] or ()),
                host=r[21], min_gpu_memory_gb=r[22], spec=decode_spec(r[23]), submitted_by=r[27] or "",
            )
            self.states[r[0]] = _with_retry_wait(self.states[r[0]], self.needs[r[0]].spec.retry_backoff_s)
        self.live_states = dict(self.states)
        self.attempt_hosts = {}
        for job_id, attempt, host in self.con.execute(
                "SELECT job_id, attempt, json_extract_string(data, '$.host') FROM job_events "
                "WHERE type = 'scheduled' AND applied").fetchall():
            self.attempt_hosts.setdefault(job_id, {})[attempt] = host
        stored: dict[str, dict[int, int]] = {}
        for job_id, attempt, last in self.con.execute(
                "SELECT job_id, attempt, max(seq) FROM logs GROUP BY job_id, attempt").fetchall():
            stored.setdefault(job_id, {})[attempt] = last
        self.live_logs = LiveLogs(stored)
        for (data,) in self.con.execute(
                "SELECT data FROM scheduler_events WHERE data IS NOT NULL ORDER BY stream_seq").fetchall():
            self.note_control(ev.decode_control(data.encode()))
        self.percent = dict(self.con.execute(
            "SELECT job_id, percent FROM progress WHERE percent IS NOT NULL").fetchall())
        self.webhooks_settled = {(r[0], r[1]) for r in self.con.execute(
            "SELECT DISTINCT job_id, json_extract_string(data, '$.event') FROM job_events "
            "WHERE type = 'webhook' AND contains(data, '\"final\":true')"
        ).fetchall()}
        self.gpu_use = {job_id: (total, n) for job_id, total, n in self.con.execute(
            "SELECT job_id, sum(utilization_pct), count(utilization_pct) FROM gpu_samples "
            "WHERE job_id IS NOT NULL AND utilization_pct IS NOT NULL GROUP BY job_id").fetchall()}
        for (data,) in self.con.execute(
                "SELECT data FROM job_events WHERE type = 'anomaly' AND applied ORDER BY stream_seq").fetchall():
            event = ev.decode_job_event(data.encode())
            if isinstance(event, ev.JobAnomaly):
                self.note_anomaly(event)
        for beat in self.con.execute(
            "SELECT host, last_seen_s, agent_started_s, heartbeat_interval_s, cpu_percent, "
            "memory_total_mb, memory_used_mb, disk_free_mb, running_jobs, gpu_note FROM hosts"
        ).fetchall():
            self.heartbeats[beat[0]] = ev.HostHeartbeat(
                host=beat[0], ts_s=beat[1], agent_started_s=beat[2], interval_s=beat[3],
                cpu_percent=beat[4] or 0.0, memory_total_mb=beat[5] or 0, memory_used_mb=beat[6] or 0,
                disk_free_mb=beat[7] or 0, running_jobs=list(beat[8] or []), gpu_note=beat[9] or "",
                gpus=self._load_gpus(beat[0]),
            )

    def _load_gpus(self, host: str) -> list[ev.GpuState]:
        rows = self.con.execute(
            "SELECT gpu_index, uuid, name, memory_total_mb, memory_used_mb, utilization_pct, "
            "temperature_c, power_w, pids, simulated FROM gpus WHERE host = ? ORDER BY gpu_index",
            [host],
        ).fetchall()
        return [
            ev.GpuState(
                index=r[0], uuid=r[1], name=r[2], memory_total_mb=r[3], memory_used_mb=r[4] or 0,
                utilization_pct=r[5], temperature_c=r[6], power_w=r[7], pids=list(r[8] or []),
                simulated=r[9],
            )
            for r in rows
        ]

    def note_control(self, control: ev.AnyControl) -> None:
        """The queue processor's state, and the quotas (gateway/scheduling/quotas.py)."""
        if isinstance(control, ev.QuotaSet):
            key = (control.kind, control.name)
            if control.max_gpus is None and control.max_running_jobs is None:
                self.quotas.pop(key, None)
            else:
                self.quotas[key] = Quota(control.max_gpus, control.max_running_jobs)
        else:
            self.scheduler_paused = isinstance(control, ev.SchedulerPaused)

    def note_gpu_use(self, beat: ev.HostHeartbeat) -> None:
        utilisation = {g.index: g.utilization_pct for g in beat.gpus}
        for job in beat.jobs:
            for gpu in job.gpu_ids:
                if (pct := utilisation.get(gpu)) is not None:
                    total, n = self.gpu_use.get(job.job_id, (0.0, 0))
                    self.gpu_use[job.job_id] = (total + pct, n + 1)

    def gpu_utilisation_mean(self, job_id: str) -> float | None:
        total, n = self.gpu_use.get(job_id, (0.0, 0))
        return round(total / n, 1) if n else None

    def note_anomaly(self, event: ev.JobAnomaly) -> bool:
        """Keep `event` unless its attempt had one of its kind already (an agent restarted
        mid-stall may say it again); True if kept."""
        kept = self.anomalies.setdefault(event.job_id, [])
        if any(a.attempt == event.attempt and a.kind == event.kind for a in kept):
            return False
        kept.append(event)
        return True

    # ---- change notification -------------------------------------------------------------
    def _notify(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_applied(self, stream: str, seq: int, timeout_s: float) -> None:
        await self.wait_until(lambda: self.applied[stream] >= seq, timeout_s)

    async def wait_until(self, predicate: Callable[[], bool], timeout_s: float) -> None:
        """Wait until `predicate` holds; it is re-checked whenever the projection moves (a batch
        committed, a log batch decoded). TimeoutError after `timeout_s`."""
        async with asyncio.timeout(timeout_s):
            while not predicate():
                await self._changed.wait()


def _with_retry_wait(state: JobState, backoff_s: float) -> JobState:
    """A loaded job's retry back-off (not a column): an automatic retry still waiting waits on."""
    state = msgspec.structs.replace(state, retry_backoff_s=backoff_s)
    if state.status is JobStatus.QUEUED and state.failures and state.reason.startswith(AUTO_RETRY_REASON):
        return msgspec.structs.replace(state, retry_after_s=state.changed_s + retry_wait_s(backoff_s, state.failures))
    return state
