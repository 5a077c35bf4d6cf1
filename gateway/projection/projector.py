"""The projector: the event streams into DuckDB (DESIGN §7).

Each stream is read in natural batches; a whole batch is applied in one DuckDB transaction
together with the last applied stream sequence, so a restart re-applies nothing (anything at or
below the stored sequence is skipped) and skips nothing (reading resumes right after it).
Rows go in through Arrow tables, never row by row.

It also keeps, in memory, what the scheduler and the API need without a query: each job's
state (from the same pure `evolve`), its placement needs, and each host's latest heartbeat.

A batch is handled in two steps. `prepare` decodes the lifecycle events and evolves the job
states in memory (microseconds); the scheduler sees those `live_states` at once. `write` then
puts the batch into DuckDB on the writer thread (milliseconds), and only after its commit do
`states`, which the API answers from, move. So placing a job never waits for a disk commit,
and the API never shows a status whose rows are not yet queryable.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import duckdb
import msgspec
import pyarrow as pa
import pyarrow.compute as pc
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from gateway.projection.live_logs import LiveLogs
from gateway.projection.schema import PROJECTED_TABLES
from shared import events as ev
from shared import subjects
from shared.aio import cancel_and_wait
from shared.ids import job_key
from shared.jobspec import JobRequest
from shared.jobstate import IllegalTransition, JobState, JobStatus, evolve
from shared.nats.pullfeed import PullFeed

log = logging.getLogger("trainyard.projector")

_spec_encoder = msgspec.json.Encoder()
T = TypeVar("T")


@dataclass(frozen=True)
class JobNeeds:
    """What the scheduler must know about a job; fixed at submit."""

    priority: int
    submit_seq: int
    gpus: int
    gpu_ids: tuple[int, ...]
    host: str | None
    min_gpu_memory_gb: float | None
    spec: JobRequest
    submitted_by: str = ""


@dataclass
class JobItem:
    """One message of the job stream; lifecycle events are decoded and evolved in `prepare`."""

    seq: int
    msg: Msg
    event: ev.JobEvent | None = None
    applied: bool = True
    note: str | None = None
    subject: subjects.JobSubject | None = None


@dataclass
class PreparedBatch:
    stream: str
    last_seq: int
    msgs: list[tuple[int, Msg]] = field(default_factory=list)
    jobs: list[JobItem] = field(default_factory=list)
    states: dict[str, JobState] = field(default_factory=dict)
    needs: dict[str, JobNeeds] = field(default_factory=dict)
    submit_seqs: dict[str, int] = field(default_factory=dict)
    heartbeats: dict[str, ev.HostHeartbeat] = field(default_factory=dict)  # latest per host
    beats: list[ev.HostHeartbeat] = field(default_factory=list)  # all of them, for gpu_samples
    logs: list[ev.LogBatch] = field(default_factory=list)  # the log stream's, decoded
    controls: list[tuple[int, ev.AnyControl]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    # Latest percent of jobs that asked for progress webhooks (the others' progress is left to
    # the writer to decode).
    percent: dict[str, float] = field(default_factory=dict)
    jobs_changed: bool = False


# Subjects `ty.job.<id>.<kind>` whose events change a job's status (decoded in `prepare`).
_LIFECYCLE_KINDS = frozenset(ev.tag_of(t) for t in ev.LIFECYCLE) | {"deleted", "webhook"}
# What a deleted job leaves behind: nothing but its rows in job_events.
_JOB_TABLES = ("jobs", "progress", "checkpoints", "exports")
_JOB_KEYED_TABLES = ("logs", "metrics")


# Up to this many rows an INSERT binds them as parameters: ~1 ms for one row against ~3 ms for
# building and scanning an Arrow table (which wins from about a dozen rows on). The first line of
# a job, and most lifecycle events, are batches of one.
SMALL_BATCH_ROWS = 8
# Shorter runs than this, on average, are built from a list instead (Tables.runs).
RUN_MIN_ROWS = 32
LOG_COLUMNS = ("job_id", "job_key", "attempt", "seq", "ts_s", "stream", "level", "kind", "text")


class Tables:
    """Bulk writes through Arrow, typed from the DuckDB schema. Typing the arrays up front
    matters for small batches: inferring the types of eight 1-row columns costs ~1 ms."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._types = {
            table: {f.name: f.type for f in con.sql(f"SELECT * FROM {table} LIMIT 0").to_arrow_table().schema}
            for table in PROJECTED_TABLES
        }

    def arrow(self, table: str, columns: dict[str, list | pa.Array]) -> pa.Table:
        types = self._types[table]
        return pa.Table.from_arrays(
            [v if isinstance(v, pa.Array) else pa.array(v, type=types[k]) for k, v in columns.items()],
            names=list(columns),
        )

    def runs(self, table: str, column: str, runs: list[tuple[object, int]]) -> pa.Array:
        """A column given as runs of (value, count), repeated in C. Runs of a few rows each
        (stdout and stderr interleaved line by line) are cheaper as a list."""
        kind = self._types[table][column]
        if len(runs) == 1:
            return pa.repeat(pa.scalar(runs[0][0], kind), runs[0][1])
        if len(runs) * RUN_MIN_ROWS > sum(n for _, n in runs):
            return pa.array(ev.expand(runs), kind)
        return pa.concat_arrays([pa.repeat(pa.scalar(value, kind), n) for value, n in runs])

    @staticmethod
    def run_with(con: duckdb.DuckDBPyConnection, rows: pa.Table, *statements: str) -> None:
        """Run statements that read `arrow_rows`, registered explicitly on this cursor: DuckDB's
        implicit scan of Python variables is off, with all external access (DESIGN §10)."""
        con.register("arrow_rows", rows)
        try:
            for sql in statements:
                con.execute(sql)
        finally:
            con.unregister("arrow_rows")

    @staticmethod
    def _values(con: duckdb.DuckDBPyConnection, statement: str, columns: dict[str, list], n: int) -> None:
        """`statement` ending in VALUES, with the rows bound as parameters."""
        row = "(" + ", ".join("?" * len(columns)) + ")"
        params = [col[i] for i in range(n) for col in columns.values()]
        con.execute(f"{statement} {', '.join([row] * n)}", params)

    def insert(self, con: duckdb.DuckDBPyConnection, table: str, columns: dict[str, list]) -> None:
        n = len(next(iter(columns.values()))) if columns else 0
        if not n:
            return
        names = ", ".join(columns)
        if n <= SMALL_BATCH_ROWS and not any(isinstance(v, pa.Array) for v in columns.values()):
            self._values(con, f"INSERT INTO {table} ({names}) VALUES", columns, n)
            return
        self.run_with(con, self.arrow(table, columns), f"INSERT INTO {table} ({names}) SELECT {names} FROM arrow_rows")

    def replace_by_key(self, con: duckdb.DuckDBPyConnection, table: str, keys: tuple[str, ...],
                       columns: dict[str, list]) -> None:
        """Upsert for tables with one row per key: delete the keys, insert the new rows."""
        if not len(next(iter(columns.values()))):
            return
        match = " AND ".join(f"{table}.{k} = arrow_rows.{k}" for k in keys)
        names = ", ".join(columns)
        self.run_with(con, self.arrow(table, columns),
                      f"DELETE FROM {table} WHERE EXISTS (SELECT 1 FROM arrow_rows WHERE {match})",
                      f"INSERT INTO {table} ({names}) SELECT {names} FROM arrow_rows")


FEW_ROWS = 3


def _decoded(msgs: list[tuple[int, Msg]], decode: Callable[[bytes], T], what: str) -> Iterator[T]:
    """Each message decoded; one that does not decode is skipped, with an error logged."""
    return (event for event in _decoded_or_none(msgs, decode, what) if event is not None)


def _decoded_or_none(msgs: list[tuple[int, Msg]], decode: Callable[[bytes], T], what: str) -> Iterator[T | None]:
    for _, msg in msgs:
        try:
            yield decode(msg.data)
        except msgspec.DecodeError:
            log.error("undecodable %s on %s skipped", what, msg.subject)
            yield None


def _log_batches(msgs: list[tuple[int, Msg]]) -> list[ev.LogBatch]:
    """The log batches of `msgs`; one that is not the log of the job its subject names (which
    the sending host's NATS user may publish) is skipped, with an error logged."""
    batches = []
    for (_, msg), event in zip(msgs, _decoded_or_none(msgs, ev.decode_job_event, "log batch")):
        subject = subjects.parse_job_subject(msg.subject)
        if event is None or subject is None:
            continue
        if not isinstance(event, ev.LogBatch) or event.job_id != subject.job_id:
            log.error("%s on %s skipped: not a log batch of that job", ev.tag_of(type(event)), msg.subject)
            continue
        batches.append(event)
    return batches


def refusal(subject: subjects.JobSubject | None, event: ev.JobEvent | None) -> str | None:
    """Why an event may not be applied as its subject says, or None. The subject is what NATS
    permissions vouch for: a host publishes only on its own agent subjects, and only the kinds
    of event a host sends are taken from them; the body must be what the subject says."""
    if subject is None:
        return "not a job subject"
    if subject.host is not None and subject.kind not in subjects.AGENT_EVENT_KINDS:
        return f"host {subject.host} may not send {subject.kind} events"
    if event is not None and (ev.tag_of(type(event)) != subject.kind or event.job_id != subject.job_id):
        return f"its body is a {ev.tag_of(type(event))} event of {event.job_id}, its subject says {subject.kind} of {subject.job_id}"
    return None


def _state_columns(state: JobState) -> dict[str, object]:
    """The `jobs` columns that follow the job's status."""
    return {
        "status": state.status.value, "attempt": state.attempt, "host": state.host,
        "gpu_ids": list(state.gpu_ids), "started_s": state.started_s,
        "finished_s": state.finished_s, "exit_code": state.exit_code, "signal": state.signal,
        "reason": state.reason, "stop_requested": state.stop_requested, "pid": state.pid,
        "run_dir": state.run_dir, "stdout_path": state.stdout_path,
        "stderr_path": state.stderr_path, "last_lines": list(state.last_lines),
        "failures": state.failures, "updated_s": state.changed_s,
    }


class Projector:
    def __init__(self, con: duckdb.DuckDBPyConnection, replica: str, *, batch: int = 2048) -> None:
        self.con = con
        self.replica = replica
        self.batch = batch
        self.applied: dict[str, int] = {s: 0 for s in subjects.EVENT_STREAMS}
        # job -> attempt -> the host it was placed on: who may report on it (`_host_refusal`).
        self.attempt_hosts: dict[str, dict[int, str]] = {}
        self.scheduler_paused = False  # the queue processor, as the last control event left it
        # Per job: the job-stream sequence of its last applied event (answers cached by it).
        self.job_versions: dict[str, int] = {}
        # Jobs whose end was told to their webhook (or every try was used up).
        # (job, webhook event) delivered or given up on: never sent again, also after a restart.
        self.webhooks_settled: set[tuple[str, str]] = set()
        self.percent: dict[str, float] = {}  # latest, of jobs with progress webhooks
        self.states: dict[str, JobState] = {}  # as committed to DuckDB: what the API shows
        self.live_states: dict[str, JobState] = {}  # ahead of the commit: what the scheduler uses
        self.needs: dict[str, JobNeeds] = {}
        self.heartbeats: dict[str, ev.HostHeartbeat] = {}
        self.on_jobs_changed: list[Callable[[], None]] = []
        # Log lines for followers, ahead of the commit (gateway/projection/live_logs.py says why).
        self.live_logs = LiveLogs()  # loaded from DuckDB in _load
        # Counts the moves of the projection: a batch committed, a log batch decoded.
        self.version = 0
        self.tables = Tables(con)
        # One writer thread and cursor per stream: a log batch never queues behind a job-event
        # batch. They append to different tables and update different offset rows, so DuckDB's
        # optimistic concurrency lets their transactions run side by side.
        self._writers = {s: ThreadPoolExecutor(1, thread_name_prefix=f"projector-{s}") for s in subjects.EVENT_STREAMS}
        self._cursors = {s: con.cursor() for s in subjects.EVENT_STREAMS}
        # Set (and replaced) whenever the projection moves. Not an asyncio.Condition: a waiter
        # holds a Condition's lock around its wait, and a waiter torn down mid-wait (an SSE
        # client that disconnects closes its generator there) could leave the lock held for
        # good, and with it every later commit.
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._feeds: list[PullFeed] = []
        self.healthy = False
        self.last_error = ""
        self._stopping = False
        self._load()

    # ---- start-up ----------------------------------------------------------------------------
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
                      submitted_by
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
                changed_s=r[26] or 0.0,
            )
            self.needs[r[0]] = JobNeeds(
                priority=r[17], submit_seq=r[18], gpus=r[19], gpu_ids=tuple(r[20] or ()),
                host=r[21], min_gpu_memory_gb=r[22], spec=decode_spec(r[23]), submitted_by=r[27] or "",
            )
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
        last = self.con.execute(
            "SELECT type FROM scheduler_events ORDER BY stream_seq DESC LIMIT 1"
        ).fetchall()
        self.scheduler_paused = bool(last) and last[0][0] == "paused"
        self.percent = dict(self.con.execute(
            "SELECT job_id, percent FROM progress WHERE percent IS NOT NULL").fetchall())
        self.webhooks_settled = {(r[0], r[1]) for r in self.con.execute(
            "SELECT DISTINCT job_id, json_extract_string(data, '$.event') FROM job_events "
            "WHERE type = 'webhook' AND contains(data, '\"final\":true')"
        ).fetchall()}
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

    async def start(self, nc: Client, js: JetStreamContext) -> None:
        for stream in subjects.EVENT_STREAMS:
            consumer = subjects.projector_consumer(self.replica, stream)
            await self._reset_consumer(js, stream, consumer)
            feed = PullFeed(nc, stream, consumer, batch=self.batch)
            await feed.start()
            self._feeds.append(feed)
            task = asyncio.create_task(self._follow(stream, feed), name=f"projector-{stream}")
            task.add_done_callback(self._follow_ended)
            self._tasks.append(task)
        self.healthy = True

    def _follow_ended(self, task: asyncio.Task[None]) -> None:
        """A stream's follower ends only at stop. One that ends otherwise (a bug) must not go
        unseen: the projection would silently freeze, so /health says so."""
        if self._stopping or not self.healthy:  # a stop, or a failed write that said why
            return
        error = "cancelled" if task.cancelled() else repr(task.exception())
        self.healthy = False
        self.last_error = f"{task.get_name()} ended: {error}"
        log.error("projector stopped: %s", self.last_error, exc_info=None if task.cancelled() else task.exception())

    async def _reset_consumer(self, js: JetStreamContext, stream: str, consumer: str) -> None:
        """Point this replica's consumer right after the sequence DuckDB holds. The DuckDB file
        is the checkpoint, so a fresh file (rebuild) replays from the start."""
        try:
            await js.delete_consumer(stream, consumer)
        except NotFoundError:
            pass
        start = self.applied[stream] + 1
        config = ConsumerConfig(
            durable_name=consumer,
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            max_waiting=16,
        )
        await js.add_consumer(stream, config)

    async def stop(self) -> None:
        self._stopping = True
        await cancel_and_wait(self._tasks)
        for feed in self._feeds:
            await feed.stop()
        for writer in self._writers.values():
            writer.shutdown(wait=True)
        for cursor in self._cursors.values():
            cursor.close()

    # ---- the loop ----------------------------------------------------------------------------
    async def _follow(self, stream: str, feed: PullFeed) -> None:
        loop = asyncio.get_running_loop()
        while True:
            msgs = await feed.next_batch(max_msgs=self.batch)
            if stream == subjects.JOB_STREAM:
                await self._wait_for_logs_of_exits(msgs)
            batch = self.prepare(stream, msgs)
            self._announce(batch)
            try:
                await loop.run_in_executor(self._writers[stream], self.write, batch)
            except Exception as exc:
                # A bug or a DuckDB fault: nothing of the batch was committed. Say so and stop
                # this stream here rather than skip events; /health reports it.
                self.healthy = False
                self.last_error = f"{stream}: {exc}"
                log.exception("projector stopped on %s", stream)
                raise
            self._merge(batch)

    async def _wait_for_logs_of_exits(self, msgs: list[Msg]) -> None:
        needed = 0
        for msg in msgs:
            if (subject := subjects.parse_job_subject(msg.subject)) and subject.kind == "exited":
                try:
                    event = ev.decode_job_event(msg.data)
                except msgspec.DecodeError:
                    continue
                if isinstance(event, ev.JobExited):
                    needed = max(needed, event.log_stream_seq)
        if needed:
            try:
                await self.wait_applied(subjects.LOG_STREAM, needed, timeout_s=5.0)
            except TimeoutError:
                log.warning("log stream behind seq %s; showing the exit anyway", needed)

    def _announce(self, batch: PreparedBatch) -> None:
        """Make the evolved states live for the scheduler before the batch is written."""
        if batch.controls:
            self.scheduler_paused = isinstance(batch.controls[-1][1], ev.SchedulerPaused)
            batch.jobs_changed = True
        self.needs.update(batch.needs)
        self.live_states.update(batch.states)
        for job_id in batch.deleted:
            self.live_states.pop(job_id, None)
        for item in batch.jobs:
            if isinstance(item.event, ev.WebhookDelivery) and item.event.final:
                self.webhooks_settled.add((item.event.job_id, item.event.event))
        self.percent.update(batch.percent)
        self.heartbeats.update(batch.heartbeats)
        for logs in batch.logs:
            self.live_logs.announce(logs)
        if batch.logs:
            self._notify()  # log followers take these before the commit
        if batch.jobs_changed or batch.heartbeats or batch.percent:
            for callback in self.on_jobs_changed:
                callback()

    def _merge(self, batch: PreparedBatch) -> None:
        """The batch is committed: the API may show it."""
        self.states.update(batch.states)
        for item in batch.jobs:
            if item.subject is not None:  # (control events have none)
                self.job_versions[item.subject.job_id] = item.seq
        for job_id in batch.deleted:
            self.states.pop(job_id, None)
            self.needs.pop(job_id, None)
            self.attempt_hosts.pop(job_id, None)
            self.live_logs.deleted(job_id)
        for logs in batch.logs:
            self.live_logs.committed(logs)
        self.applied[batch.stream] = max(self.applied[batch.stream], batch.last_seq)
        self._notify()

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

    # ---- preparing a batch (event loop: decode and evolve, no I/O) -----------------------------
    def prepare(self, stream: str, msgs: list[Msg]) -> PreparedBatch:
        fresh = [(m.metadata.sequence.stream, m) for m in msgs]
        fresh = [(seq, m) for seq, m in fresh if seq > self.applied[stream]]
        batch = PreparedBatch(stream, last_seq=fresh[-1][0] if fresh else self.applied[stream], msgs=fresh)
        if stream == subjects.JOB_STREAM:
            for seq, msg in fresh:
                batch.jobs.append(self._evolve_item(seq, msg, batch))
        elif stream == subjects.LOG_STREAM:
            batch.logs = _log_batches(fresh)
        elif stream == subjects.HOST_STREAM:
            for beat in _decoded(fresh, ev.decode_heartbeat, "host event"):
                batch.heartbeats[beat.host] = beat
                batch.beats.append(beat)
        return batch

    def _note_percent(self, item: JobItem, batch: PreparedBatch) -> None:
        """The percent of a job that asked for progress webhooks; the decoded event stays on
        the item, so the writer does not decode it again."""
        assert item.subject is not None
        job_id = item.subject.job_id
        needs = self.needs.get(job_id) or batch.needs.get(job_id)
        if needs is None or not needs.spec.webhook_progress:
            return
        try:
            event = ev.decode_job_event(item.msg.data)
        except msgspec.DecodeError:
            return  # the writer records it as undecodable
        item.event = event
        if self._report_accepted(item, event) and isinstance(event, ev.JobProgress) and event.percent is not None:
            batch.percent[job_id] = event.percent

    def _evolve_item(self, seq: int, msg: Msg, batch: PreparedBatch) -> JobItem:
        item = JobItem(seq, msg)
        if msg.subject.startswith("ty.ctl."):
            try:
                batch.controls.append((seq, ev.decode_control(msg.data)))
            except msgspec.DecodeError:
                log.error("undecodable control event %s skipped", msg.subject)
            item.applied = False  # not a job event: recorded in scheduler_events instead
            item.note = "control"
            return item
        item.subject = subject = subjects.parse_job_subject(msg.subject)
        if (why := refusal(subject, None)) is not None:
            item.applied, item.note = False, why
            return item
        assert subject is not None
        if subject.kind == "progress":
            self._note_percent(item, batch)
        if subject.kind not in _LIFECYCLE_KINDS:
            return item  # metrics, progress, checkpoints: decoded (and checked) by the writer
        try:
            event = ev.decode_job_event(msg.data)
        except msgspec.DecodeError as exc:
            item.applied, item.note = False, f"undecodable: {exc}"
            return item
        item.event = event
        if (why := refusal(subject, event)) is not None:
            item.applied, item.note = False, why
            return item
        if isinstance(event, ev.JobDeleted):
            state = batch.states.get(event.job_id) or self.live_states.get(event.job_id)
            if state is None or not state.is_terminal:
                where = state.status.value if state else "unknown"
                item.applied, item.note = False, f"not deleted: the job is {where}"
            else:
                batch.deleted.append(event.job_id)
                batch.states.pop(event.job_id, None)
                batch.jobs_changed = True
            return item
        if not isinstance(event, ev.LIFECYCLE):
            return item
        before = batch.states.get(event.job_id) or self.live_states.get(event.job_id)
        if subject.host is not None and (before is None or before.host != subject.host):
            # A host reports only on the job placed on it (the state machine fences attempts).
            item.applied = False
            item.note = f"sent by host {subject.host}; the job is {'on ' + before.host if before and before.host else 'on no host'}"
            return item
        try:
            after = evolve(before, event)
        except IllegalTransition as exc:
            item.applied, item.note = False, str(exc)
            return item
        batch.states[event.job_id] = after
        batch.jobs_changed = True
        if isinstance(event, ev.JobScheduled):
            self.attempt_hosts.setdefault(event.job_id, {})[event.attempt] = event.host
        if isinstance(event, ev.JobSubmitted):
            spec = event.spec
            batch.submit_seqs[event.job_id] = seq
            batch.needs[event.job_id] = JobNeeds(
                priority=spec.priority, submit_seq=seq, gpus=spec.gpu_count(),
                gpu_ids=tuple(spec.gpu_ids or ()), host=spec.host,
                min_gpu_memory_gb=spec.min_gpu_memory_gb, spec=spec, submitted_by=event.submitted_by,
            )
        return item

    # ---- writing a batch (writer thread) ------------------------------------------------------
    def write(self, batch: PreparedBatch) -> None:
        if not batch.msgs:
            return
        con = self._cursors[batch.stream]
        con.execute("BEGIN TRANSACTION")
        try:
            if batch.stream == subjects.JOB_STREAM:
                self._write_job_events(con, batch)
            elif batch.stream == subjects.LOG_STREAM:
                self._apply_logs(con, batch.logs)
            elif batch.stream == subjects.HOST_STREAM:
                self._write_host_events(con, batch)
            con.execute(
                "UPDATE projector_offsets SET last_seq = ? WHERE stream = ?", [batch.last_seq, batch.stream]
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def _apply_logs(self, con: duckdb.DuckDBPyConnection, batches: list[ev.LogBatch]) -> None:
        """Columns built in Arrow from the batches as they travel (ev.LogBatch): the texts
        split in C, the repeated values repeated in C; no Python object per line."""
        if sum(b.count for b in batches) <= SMALL_BATCH_ROWS:
            cols: dict[str, list] = {k: [] for k in LOG_COLUMNS}
            for b in batches:
                for name, values in zip(LOG_COLUMNS, self._log_values(b)):
                    cols[name].extend(values)
            self.tables.insert(con, "logs", cols)
            return
        parts = [self._log_arrays(b) for b in batches]
        self.tables.insert(con, "logs", {name: pa.concat_arrays([p[i] for p in parts]) if len(parts) > 1 else parts[0][i]
                                         for i, name in enumerate(LOG_COLUMNS)})

    @staticmethod
    def _log_values(b: ev.LogBatch) -> tuple[list, ...]:
        return ([b.job_id] * b.count, [job_key(b.job_id)] * b.count, [b.attempt] * b.count,
                list(range(b.first_seq, b.end_seq)), b.times(), ev.expand(b.stream), ev.expand(b.level),
                ev.expand(b.kind), b.texts())

    def _log_arrays(self, b: ev.LogBatch) -> list[pa.Array]:
        runs = self.tables.runs
        return [runs("logs", "job_id", [(b.job_id, b.count)]), runs("logs", "job_key", [(job_key(b.job_id), b.count)]),
                runs("logs", "attempt", [(b.attempt, b.count)]),
                pa.array(range(b.first_seq, b.end_seq), pa.int64()),
                runs("logs", "ts_s", b.line_ts_s), runs("logs", "stream", b.stream), runs("logs", "level", b.level),
                runs("logs", "kind", b.kind),
                pc.split_pattern(pa.array([b.text], pa.string()), "\n").flatten()]

    def _write_job_events(self, con: duckdb.DuckDBPyConnection, batch: PreparedBatch) -> None:
        events_cols: dict[str, list] = {k: [] for k in ("stream_seq", "job_id", "job_key", "attempt", "type", "ts_s", "data", "applied", "note")}
        metric_cols: dict[str, list] = {k: [] for k in ("job_id", "job_key", "attempt", "seq", "step", "epoch", "name", "value", "ts_s")}
        ckpt_cols: dict[str, list] = {k: [] for k in ("job_id", "attempt", "path", "step", "ts_s")}
        new_jobs: dict[str, list] = {}
        progress: dict[str, ev.JobProgress] = {}
        exports: list[ev.ExportRequested | ev.ExportFinished] = []
        if batch.controls:
            c = [(seq, e) for seq, e in batch.controls]
            self.tables.insert(con, "scheduler_events", {
                "stream_seq": [seq for seq, _ in c], "type": [ev.tag_of(type(e)) for _, e in c],
                "ts_s": [e.ts_s for _, e in c], "by_role": [e.by for _, e in c], "reason": [e.reason for _, e in c],
            })
        for item in batch.jobs:
            if item.note == "control":
                continue
            seq, msg = item.seq, item.msg
            event = item.event if item.event is not None or not item.applied else self._decode_checked(item)
            if event is None:  # undecodable, or refused on its subject alone
                kind = "undecodable" if item.note and item.note.startswith("undecodable") else (
                    item.subject.kind if item.subject else "unknown")
                job_id = item.subject.job_id if item.subject else ""
                self._event_row(events_cols, seq, job_id, 0, kind, 0.0, msg.data, False, item.note)
                continue
            if item.applied:
                if isinstance(event, ev.MetricsRecorded):  # points only: not a row of job_events
                    n = len(event.name)
                    metric_cols["job_id"].extend([event.job_id] * n)
                    metric_cols["job_key"].extend([job_key(event.job_id)] * n)
                    metric_cols["attempt"].extend([event.attempt] * n)
                    metric_cols["seq"].extend(range(event.first_seq, event.first_seq + n))
                    metric_cols["step"].extend(event.step)
                    metric_cols["epoch"].extend(event.epoch)
                    metric_cols["name"].extend(event.name)
                    metric_cols["value"].extend(event.value)
                    metric_cols["ts_s"].extend(event.point_ts_s)
                    continue
                if isinstance(event, ev.JobSubmitted):
                    self._new_job_row(new_jobs, seq, event, batch.states[event.job_id])
                elif isinstance(event, ev.JobProgress):
                    progress[event.job_id] = event
                elif isinstance(event, ev.CheckpointSaved):
                    for key, value in (("job_id", event.job_id), ("attempt", event.attempt),
                                       ("path", event.path), ("step", event.step), ("ts_s", event.ts_s)):
                        ckpt_cols[key].append(value)
                elif isinstance(event, (ev.ExportRequested, ev.ExportFinished)):
                    exports.append(event)
            # Filed under the job its subject names (a refused body may claim another).
            job_id = item.subject.job_id if item.subject else event.job_id
            self._event_row(events_cols, seq, job_id, event.attempt, ev.tag_of(type(event)),
                            event.ts_s, msg.data, item.applied, item.note)
        self.tables.insert(con, "jobs", new_jobs)
        self._update_job_rows(con, [st for j, st in batch.states.items() if j not in batch.submit_seqs])
        self.tables.insert(con, "job_events", events_cols)
        self.tables.insert(con, "metrics", metric_cols)
        self.tables.insert(con, "checkpoints", ckpt_cols)
        self._write_exports(con, exports)
        for job_id in batch.deleted:
            for table in _JOB_TABLES:
                con.execute(f"DELETE FROM {table} WHERE job_id = ?", [job_id])
            for table in _JOB_KEYED_TABLES:
                con.execute(f"DELETE FROM {table} WHERE job_key = ? AND job_id = ?", [job_key(job_id), job_id])
        if progress:
            p = list(progress.values())
            self.tables.replace_by_key(con, "progress", ("job_id",), {
                "job_id": [e.job_id for e in p], "attempt": [e.attempt for e in p],
                "step": [e.step for e in p], "total_steps": [e.total_steps for e in p],
                "epoch": [e.epoch for e in p], "total_epochs": [e.total_epochs for e in p],
                "percent": [e.percent for e in p], "rate_steps_s": [e.rate_steps_s for e in p],
                "eta_s": [e.eta_s for e in p], "estimated": [e.estimated for e in p],
                "ts_s": [e.ts_s for e in p],
            })

    def _decode_checked(self, item: JobItem) -> ev.JobEvent | None:
        """The event of an item `prepare` left to the writer (metrics, progress, checkpoints),
        not applied if its body is not what its subject says."""
        try:
            event = ev.decode_job_event(item.msg.data)
        except msgspec.DecodeError as exc:
            item.applied, item.note = False, f"undecodable: {exc}"
            return None
        self._report_accepted(item, event)
        return event

    def _report_accepted(self, item: JobItem, event: ev.JobEvent) -> bool:
        """A report that is not a lifecycle event (those are checked in `_evolve_item`): its
        body must be what its subject says, and a host's on an attempt placed on that host.
        If not, the item is marked not applied, with why."""
        why = refusal(item.subject, event) or self._host_refusal(item.subject, event)
        if why is not None:
            item.applied, item.note = False, why
        return why is None

    def _host_refusal(self, subject: subjects.JobSubject | None, event: ev.JobEvent) -> str | None:
        """A host reports (progress, metrics, checkpoints, notes, exports) only on attempts placed
        on it. Its `scheduled` event comes first in the same stream, so the placement is known."""
        if subject is None or subject.host is None:
            return None
        placed = self.attempt_hosts.get(event.job_id, {}).get(event.attempt)
        if placed == subject.host:
            return None
        return f"sent by host {subject.host}; attempt {event.attempt} was placed on {placed or 'no host'}"

    @staticmethod
    def _write_exports(con: duckdb.DuckDBPyConnection, events: list[ev.ExportRequested | ev.ExportFinished]) -> None:
        """Export steps are rare: a statement each, in stream order."""
        for e in events:
            if isinstance(e, ev.ExportRequested):
                con.execute(
                    "INSERT INTO exports (export_id, job_id, attempt, status, checkpoint, requested_s) "
                    "VALUES (?, ?, ?, 'running', ?, ?)", [e.export_id, e.job_id, e.attempt, e.checkpoint, e.ts_s])
            else:
                con.execute(
                    "UPDATE exports SET status = ?, path = ?, reason = ?, finished_s = ? WHERE export_id = ?",
                    [e.outcome, e.path, e.reason, e.ts_s, e.export_id])

    @staticmethod
    def _event_row(cols: dict[str, list], seq: int, job_id: str, attempt: int, type_: str,
                   ts_s: float, data: bytes, applied: bool, note: str | None) -> None:
        cols["stream_seq"].append(seq)
        cols["job_id"].append(job_id)
        cols["job_key"].append(job_key(job_id))
        cols["attempt"].append(attempt)
        cols["type"].append(type_)
        cols["ts_s"].append(ts_s)
        cols["data"].append(data.decode("utf-8", "replace"))
        cols["applied"].append(applied)
        cols["note"].append(note)

    @staticmethod
    def _new_job_row(cols: dict[str, list], seq: int, event: ev.JobSubmitted, state: JobState) -> None:
        """The job's row as of the end of this batch (so it needs no UPDATE in the same batch)."""
        spec = event.spec
        values = {
            "job_id": event.job_id, "submit_seq": seq, "name": spec.name,
            "description": spec.description, "trainer": spec.trainer, "priority": spec.priority,
            "gpus": spec.gpu_count(), "requested_gpu_ids": list(spec.gpu_ids) if spec.gpu_ids else None,
            "requested_host": spec.host, "min_gpu_memory_gb": spec.min_gpu_memory_gb,
            "max_retries": spec.max_retries, "submitted_by": event.submitted_by,
            "spec": _spec_encoder.encode(spec).decode(), "submitted_s": event.ts_s,
            **_state_columns(state),
        }
        for key, value in values.items():
            cols.setdefault(key, []).append(value)

    def _update_job_rows(self, con: duckdb.DuckDBPyConnection, states: list[JobState]) -> None:
        if not states:
            return
        if len(states) <= FEW_ROWS:
            # One parameterised UPDATE per job: about half the cost of UPDATE ... FROM an
            # Arrow table when a batch moves one or two jobs, which is the latency-critical case.
            # Only the columns that changed since the last commit (the row holds that state):
            # DuckDB updates column by column, and a list column costs a delete and an insert,
            # so "started" costs 1 ms instead of 3.
            for state in states:
                row = _state_columns(state)
                committed = self.states.get(state.job_id)
                if committed is not None:
                    before = _state_columns(committed)
                    row = {k: v for k, v in row.items() if before[k] != v}
                if row:
                    sets = ", ".join(f"{k} = ?" for k in row)
                    con.execute(f"UPDATE jobs SET {sets} WHERE job_id = ?", [*row.values(), state.job_id])
            return
        rows = [_state_columns(x) for x in states]
        columns = {"job_id": [x.job_id for x in states], **{k: [r[k] for r in rows] for k in rows[0]}}
        sets = ", ".join(f"{k} = arrow_rows.{k}" for k in rows[0])
        self.tables.run_with(con, self.tables.arrow("jobs", columns),
                             f"UPDATE jobs SET {sets} FROM arrow_rows WHERE jobs.job_id = arrow_rows.job_id")

    def _write_host_events(self, con: duckdb.DuckDBPyConnection, batch: PreparedBatch) -> None:
        latest = batch.heartbeats
        if not latest:
            return
        samples: dict[str, list] = {k: [] for k in ("host", "gpu_index", "ts_s", "memory_used_mb", "utilization_pct", "temperature_c", "power_w")}
        for beat in batch.beats:
            for g in beat.gpus:
                for key, value in (("host", beat.host), ("gpu_index", g.index), ("ts_s", beat.ts_s),
                                   ("memory_used_mb", g.memory_used_mb), ("utilization_pct", g.utilization_pct),
                                   ("temperature_c", g.temperature_c), ("power_w", g.power_w)):
                    samples[key].append(value)
        beats = list(latest.values())
        self.tables.replace_by_key(con, "hosts", ("host",), {
            "host": [b.host for b in beats], "last_seen_s": [b.ts_s for b in beats],
            "agent_started_s": [b.agent_started_s for b in beats],
            "heartbeat_interval_s": [b.interval_s for b in beats],
            "cpu_percent": [b.cpu_percent for b in beats],
            "memory_total_mb": [b.memory_total_mb for b in beats],
            "memory_used_mb": [b.memory_used_mb for b in beats],
            "disk_free_mb": [b.disk_free_mb for b in beats],
            "running_jobs": [b.running_jobs for b in beats],
            "gpu_count": [len(b.gpus) for b in beats], "gpu_note": [b.gpu_note for b in beats],
        })
        gpu_rows = [(b, g) for b in beats for g in b.gpus]
        con.execute(
            "DELETE FROM gpus WHERE host IN (SELECT unnest(?::VARCHAR[]))", [[b.host for b in beats]]
        )
        if gpu_rows:
            self.tables.insert(con, "gpus", {
                "host": [b.host for b, _ in gpu_rows], "gpu_index": [g.index for _, g in gpu_rows],
                "uuid": [g.uuid for _, g in gpu_rows], "name": [g.name for _, g in gpu_rows],
                "memory_total_mb": [g.memory_total_mb for _, g in gpu_rows],
                "memory_used_mb": [g.memory_used_mb for _, g in gpu_rows],
                "utilization_pct": [g.utilization_pct for _, g in gpu_rows],
                "temperature_c": [g.temperature_c for _, g in gpu_rows],
                "power_w": [g.power_w for _, g in gpu_rows],
                "pids": [g.pids for _, g in gpu_rows], "simulated": [g.simulated for _, g in gpu_rows],
                "ts_s": [b.ts_s for b, _ in gpu_rows],
            })
        self.tables.insert(con, "gpu_samples", samples)
